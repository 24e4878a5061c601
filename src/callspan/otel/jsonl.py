"""An exporter writing OTLP JSON lines: the format of the Collector's file exporter.

One line per export call: {"resourceSpans": [...]} with hex ids, string nanosecond times and
string intValues, as the OTLP/JSON specification and the Collector write them.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from typing import IO, Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from callspan.otlp_json import json_string, key_values_json
from callspan.outfiles import open_output


class _Encoded(str):
    """JSON text already encoded (attribute lists): written as is."""


def _dumps(value: Any) -> str:
    """Compact JSON, as ``json.dumps(value, separators=(",", ":"))`` writes it, with
    ``_Encoded`` parts as they are (the attributes: see callspan.otlp_json). Written as pieces
    joined once: a request is megabytes of span text, which nested concatenation copied at every
    level."""
    parts: list[str] = []
    _write(value, parts)
    return "".join(parts)


def _write(value: Any, out: list[str]) -> None:
    if isinstance(value, _Encoded):
        out.append(value)
    elif isinstance(value, dict):
        out.append("{")
        for i, (key, item) in enumerate(value.items()):
            out.append(("," if i else "") + json_string(key) + ":")
            _write(item, out)
        out.append("}")
    elif isinstance(value, list):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _write(item, out)
        out.append("]")
    else:
        out.append(json.dumps(value))


def encode_spans(spans: Sequence[ReadableSpan]) -> str:
    """The ExportTraceServiceRequest for ``spans`` as one line of OTLP/JSON."""
    return _dumps(_request(spans))


def _request(spans: Sequence[ReadableSpan]) -> dict[str, Any]:
    resources: dict[int, tuple[Any, dict[Any, list[Any]]]] = {}
    scope_keys: dict[int, Any] = {}  # per scope object (a tracer's spans share one): its key
    for span in spans:
        resource_entry = resources.setdefault(id(span.resource), (span.resource, {}))
        scope = span.instrumentation_scope
        if id(scope) not in scope_keys:
            scope_keys[id(scope)] = (
                (scope.name, scope.version, tuple(sorted((scope.attributes or {}).items()))) if scope else None)
        scope_key = scope_keys[id(scope)]
        resource_entry[1].setdefault(scope_key, []).append(_span(span))
    resource_spans = []
    for resource, scopes in resources.values():
        scope_spans = []
        for scope_key, encoded in scopes.items():
            scope_json: dict[str, Any] = {}
            if scope_key is not None:
                scope_json = {"name": scope_key[0]}
                if scope_key[1]:
                    scope_json["version"] = scope_key[1]
                if scope_key[2]:
                    scope_json["attributes"] = _Encoded(key_values_json(dict(scope_key[2])))
            scope_spans.append({"scope": scope_json, "spans": encoded})
        resource_spans.append({
            "resource": {"attributes": _Encoded(key_values_json(resource.attributes))},
            "scopeSpans": scope_spans,
        })
    return {"resourceSpans": resource_spans}


def _span(span: ReadableSpan) -> _Encoded:
    """One OTLP/JSON Span, as text: what ``_dumps`` writes for its object form (keys in that
    order: status before the optional parentSpanId and events). Written directly: the exporter
    encodes every kept span (thousands at a run's end), and a dict per span walked by ``_dumps``
    cost ~3x more."""
    context = span.context
    status = span.status
    code = status.status_code.value
    if not code:
        status_json = "{}"
    elif status.description:
        status_json = '{"code":' + str(code) + ',"message":' + json_string(status.description) + "}"
    else:
        status_json = '{"code":' + str(code) + "}"
    text = (f'{{"traceId":"{context.trace_id:032x}","spanId":"{context.span_id:016x}",'
            f'"name":{json_string(span.name)},"kind":{span.kind.value + 1},'  # OTLP enum: 1 = INTERNAL; the SDK's starts at 0
            f'"startTimeUnixNano":"{span.start_time}","endTimeUnixNano":"{span.end_time}",'
            f'"attributes":{key_values_json(span.attributes)},"status":{status_json}')
    if span.parent is not None:
        text += f',"parentSpanId":"{span.parent.span_id:016x}"'
    events = span.events  # a property that copies them
    if events:
        text += ',"events":[' + ",".join(
            f'{{"timeUnixNano":"{e.timestamp}","name":{json_string(e.name)},'
            f'"attributes":{key_values_json(e.attributes)}}}' for e in events) + "]"
    return _Encoded(text + "}")


class OtlpJsonLinesExporter(SpanExporter):
    """Appends one OTLP/JSON ExportTraceServiceRequest per export call to a file.

    The file is created as ``callspan.outfiles.open_output`` does: never written through a
    symbolic link (a link at ``path`` is replaced, its target untouched: ``replaced_link``).
    """

    def __init__(self, path: str, stream: IO[str] | None = None) -> None:
        self.path = path
        self.replaced_link: str | None = None
        # Appending: a forked child writes its own lines to the same file, each line whole.
        if stream is None:
            opened = open_output(path, append=True)
            stream, self.replaced_link = opened.stream, opened.replaced_link
        self._stream = stream
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        line = encode_spans(spans)
        try:
            with self._lock:
                self._stream.flush()
                # One write per line (an O_APPEND write lands whole at the end of the file).
                data = (line + "\n").encode()
                fileno = self._stream.fileno() if hasattr(self._stream, "buffer") else -1
                if fileno >= 0:
                    while data:
                        data = data[os.write(fileno, data):]
                else:
                    self._stream.write(line + "\n")
                    self._stream.flush()
        except (OSError, ValueError):
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        with self._lock:
            try:
                self._stream.close()
            except OSError:
                pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True

    def fileno(self) -> int:
        """The file's descriptor (-1 for a stream without one)."""
        try:
            return self._stream.fileno()
        except (AttributeError, OSError, ValueError):
            return -1

    def after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
