"""The TracerProvider that `callspan run` builds (library users bring their own).

Exporters follow the standard variables (OTEL_TRACES_EXPORTER, OTEL_EXPORTER_OTLP_*); callspan
adds span accounting so that nothing is dropped silently, and a shutdown bounded by the export
timeout so a dead collector never holds the program at exit.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from callspan.errors import CallspanError
from callspan.otel.jsonl import OtlpJsonLinesExporter

DEFAULT_OUTPUT = "callspan-traces.jsonl"
DEFAULT_EXPORT_TIMEOUT_S = 10.0


class CountingExporter(SpanExporter):
    """Wraps the real exporter and counts what it accepted and what failed."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner
        self.exported = 0
        self.failed = 0
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self.inner.export(spans)
        except Exception:
            result = SpanExportResult.FAILURE
        with self._lock:
            if result == SpanExportResult.SUCCESS:
                self.exported += len(spans)
            else:
                self.failed += len(spans)
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


@dataclass
class Destination:
    exporter: CountingExporter
    name: str  # e.g. "traces.jsonl" or "OTLP/gRPC localhost:4317"


@dataclass
class Pipeline:
    provider: TracerProvider
    destinations: list[Destination]
    export_timeout: float

    def shutdown(self) -> bool:
        """Flush and shut down, waiting at most the export timeout (plus a little). True if done."""
        done = threading.Event()

        def run() -> None:
            try:
                self.provider.shutdown()
            except Exception:
                pass
            done.set()

        threading.Thread(target=run, name="callspan-shutdown", daemon=True).start()
        return done.wait(self.export_timeout + 1.0)


def _otlp_exporter(endpoint: str | None, protocol: str | None, timeout: float) -> tuple[SpanExporter, str]:
    protocol = protocol or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        insecure = True if endpoint and endpoint.startswith("http://") else None
        exporter: SpanExporter = GrpcExporter(endpoint=endpoint, insecure=insecure, timeout=int(timeout))
        where = endpoint or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT", "localhost:4317")
        return exporter, f"OTLP/gRPC {where}"
    if protocol in ("http/protobuf", "http"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        if endpoint and not endpoint.rstrip("/").endswith("/v1/traces"):
            endpoint = endpoint.rstrip("/") + "/v1/traces"
        exporter = HttpExporter(endpoint=endpoint, timeout=timeout)
        where = endpoint or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or (
            os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4318").rstrip("/") + "/v1/traces")
        return exporter, f"OTLP/HTTP {where}"
    raise CallspanError(f"unsupported OTLP protocol {protocol!r}: use grpc or http/protobuf")


def build_pipeline(
    *,
    service_name: str,
    output: str | None,
    otlp: bool,
    otlp_endpoint: str | None,
    otlp_protocol: str | None,
    export_timeout: float = DEFAULT_EXPORT_TIMEOUT_S,
    resource_attributes: dict[str, Any] | None = None,
) -> Pipeline:
    attributes: dict[str, Any] = dict(resource_attributes or {})
    if not os.environ.get("OTEL_SERVICE_NAME"):
        attributes["service.name"] = service_name
    resource = Resource.create(attributes)
    chosen = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    exporters: list[tuple[SpanExporter, str]] = []
    if otlp or (chosen == "otlp" and output is None):
        exporters.append(_otlp_exporter(otlp_endpoint, otlp_protocol, export_timeout))
    elif chosen == "console" and output is None:
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        exporters.append((ConsoleSpanExporter(), "console"))
    if output is not None or not exporters:
        path = output or DEFAULT_OUTPUT
        try:
            exporters.append((OtlpJsonLinesExporter(path), path))
        except OSError as exc:
            raise CallspanError(f"{path}: cannot write traces: {exc.strerror or exc}") from None
    # shutdown_on_exit=False: callspan shuts down itself, bounded by the export timeout; the
    # SDK's own atexit hook would wait for a dead collector again.
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    destinations = []
    for inner, name in exporters:
        counting = CountingExporter(inner)
        destinations.append(Destination(counting, name))
        provider.add_span_processor(BatchSpanProcessor(
            counting, max_queue_size=1 << 16, schedule_delay_millis=500, max_export_batch_size=2048,
            export_timeout_millis=int(export_timeout * 1000),
        ))
    return Pipeline(provider, destinations, export_timeout)
