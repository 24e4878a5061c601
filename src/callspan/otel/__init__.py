"""The boundary: the only callspan package that imports OpenTelemetry."""
