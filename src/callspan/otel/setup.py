"""The TracerProvider that `callspan run` builds (library users bring their own).

Exporters follow the standard variables (OTEL_TRACES_EXPORTER, OTEL_EXPORTER_OTLP_*); callspan
adds span accounting so that nothing is dropped silently, and a shutdown bounded by the export
timeout so a dead collector never holds the program at exit.
"""

from __future__ import annotations

import os
import threading
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)

from callspan.errors import CallspanError
from callspan.otel.jsonl import OtlpJsonLinesExporter
from callspan.untrusted import redact_url

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
    note: str = ""  # said with the destination at exit (e.g. a symbolic link replaced)


@dataclass
class Pipeline:
    provider: TracerProvider
    destinations: list[Destination]
    export_timeout: float

    processors: list[Any] = field(default_factory=list)

    def shutdown(self) -> bool:
        """Export what is left and shut down, each destination waiting at most the export
        timeout. True if every one finished in time. No thread is started: none may be, in
        the atexit handler that calls this."""
        done = True
        for processor in self.processors:
            began = time.monotonic()
            try:
                # The SDK's BatchSpanProcessor.shutdown() takes no timeout (1.45): flush within
                # it first, then shut down (which then has nothing left to export).
                if not processor.force_flush(timeout_millis=int(self.export_timeout * 1000)):
                    done = False
                processor.shutdown()
            except Exception:
                done = False
            if time.monotonic() - began >= self.export_timeout:
                done = False
        return done


    def output_fileno(self) -> int:
        """The descriptor of the JSON-lines file written, or -1 (none)."""
        for destination in self.destinations:
            if isinstance(destination.exporter.inner, OtlpJsonLinesExporter):
                return destination.exporter.inner.fileno()
        return -1

    def after_fork_in_child(self) -> None:
        """A forked child exports its own spans, as its own process: the parent's queued spans
        are the parent's, and the resource says the child's pid (the file is shared, opened
        for appending, so both write whole lines)."""
        for processor in self.processors:
            if isinstance(processor, InlineSpanProcessor):
                processor.after_fork_in_child()
        resource = self.provider.resource.merge(Resource({"process.pid": os.getpid()}))
        self.provider._resource = resource  # the SDK has no setter


class InlineSpanProcessor(SpanProcessor):
    """Batches ended spans and exports them in the thread that ends them (callspan's builder
    thread, or the main thread at exit): for local destinations (a file, the console), where
    an export is a write. `callspan run` then adds no thread of the SDK's to the program, so a
    program that forks does not get Python's "multi-threaded fork" warning because of it."""

    def __init__(self, exporter: SpanExporter, max_queue_size: int, max_batch: int, delay_s: float) -> None:
        self.exporter = exporter
        self.max_queue_size = max_queue_size
        self.max_batch = max_batch
        self.delay_s = delay_s
        self._spans: list[ReadableSpan] = []
        self._last_export = time.monotonic()
        self._lock = threading.Lock()
        self._shut = False

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        if self._shut:
            return
        with self._lock:
            if len(self._spans) < self.max_queue_size:
                self._spans.append(span)  # beyond: dropped, and reported as not exported
            due = len(self._spans) >= self.max_batch or time.monotonic() - self._last_export >= self.delay_s
        if due:
            self.force_flush()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        with self._lock:
            spans, self._spans = self._spans, []
            self._last_export = time.monotonic()
            for start in range(0, len(spans), self.max_batch):
                self.exporter.export(spans[start:start + self.max_batch])
        return True

    def shutdown(self, timeout_millis: int = 30000) -> None:
        if self._shut:
            return
        self.force_flush()
        self._shut = True
        self.exporter.shutdown()

    def after_fork_in_child(self) -> None:
        """The parent's spans are the parent's to export."""
        self._lock = threading.Lock()
        self._spans = []


def _otlp_exporter(endpoint: str | None, protocol: str | None, timeout: float) -> tuple[SpanExporter, str]:
    protocol = protocol or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        insecure = True if endpoint and endpoint.startswith("http://") else None
        exporter: SpanExporter = GrpcExporter(endpoint=endpoint, insecure=insecure, timeout=int(timeout))
        where = endpoint or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT", "localhost:4317")
        return exporter, f"OTLP/gRPC {redact_url(where)}"
    if protocol in ("http/protobuf", "http"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        if endpoint:
            # The signal's path after the URL's path, its query (a token, say) kept in place.
            try:
                parts = urllib.parse.urlsplit(endpoint)
            except ValueError:
                raise CallspanError(f"OTLP endpoint {redact_url(endpoint)}: not a valid URL") from None
            if not parts.path.rstrip("/").endswith("/v1/traces"):
                endpoint = urllib.parse.urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/v1/traces"))
        exporter = HttpExporter(endpoint=endpoint, timeout=timeout)
        where = endpoint or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or (
            os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4318").rstrip("/") + "/v1/traces")
        return exporter, f"OTLP/HTTP {redact_url(where)}"
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
    sampler: Any = None,
    output_fd: int | None = None,
) -> Pipeline:
    """``sampler``: None for the SDK's (OTEL_TRACES_SAMPLER, else parent-based always-on);
    ``output_fd``: the output file, already open for appending (a child writing to its parent's
    file), in place of opening ``output``."""
    attributes: dict[str, Any] = dict(resource_attributes or {})
    if not os.environ.get("OTEL_SERVICE_NAME"):
        attributes["service.name"] = service_name
    resource = Resource.create(attributes)
    chosen = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    exporters: list[tuple[SpanExporter, str]] = []
    if otlp or (chosen == "otlp" and output is None):
        exporters.append(_otlp_exporter(otlp_endpoint, otlp_protocol, export_timeout))
    elif chosen == "console" and output is None:
        exporters.append((ConsoleSpanExporter(), "console"))
    if output is not None or not exporters:
        path = output or DEFAULT_OUTPUT
        stream = None if output_fd is None else os.fdopen(output_fd, "w", encoding="utf-8", newline="\n")
        exporters.append((OtlpJsonLinesExporter(path, stream), path))  # a CallspanError if it cannot be created
    # shutdown_on_exit=False: callspan shuts down itself, bounded by the export timeout; the
    # SDK's own atexit hook would wait for a dead collector again.
    provider = TracerProvider(resource=resource, shutdown_on_exit=False, sampler=sampler)
    pipeline = Pipeline(provider, [], export_timeout)
    for inner, name in exporters:
        counting = CountingExporter(inner)
        link = getattr(inner, "replaced_link", None)
        note = f" (was a symbolic link to {link}: replaced, its target left untouched)" if link else ""
        pipeline.destinations.append(Destination(counting, name, note))
        processor: SpanProcessor
        if isinstance(inner, (OtlpJsonLinesExporter, ConsoleSpanExporter)):
            processor = InlineSpanProcessor(counting, max_queue_size=1 << 16, max_batch=2048, delay_s=0.5)
        else:  # a network exporter: the SDK's own thread, so that a slow collector never holds callspan's
            processor = BatchSpanProcessor(
                counting, max_queue_size=1 << 16, schedule_delay_millis=500, max_export_batch_size=2048,
                export_timeout_millis=int(export_timeout * 1000))
        provider.add_span_processor(processor)
        pipeline.processors.append(processor)
    return pipeline
