"""The offline analyzer behind ``callspan analyze``.

Reads callspan's spans (docs/span-schema.md) from OTLP JSON lines, Jaeger JSON or Jaeger's HTTP
API and reports cache opportunities (``cache``), CPU by logical call stack (``cpu``) and
latency (``latency``). Standard library only; imports nothing of the tracer nor OpenTelemetry.

Memory: the analyzer keeps per function a few totals, and per call 37 bytes in typed arrays
(cache and latency reports), plus per span 53 bytes for the stack reports (cpu and latency),
12 bytes per span (span id, function) for the cache report's call graph until parent links are
joined (the graph itself is a set of caller/callee function pairs), and per distinct argument
key a dict entry while its function is analyzed. JSON is parsed
one line (one export request) at a time.
"""
