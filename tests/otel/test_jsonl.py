"""The JSON-lines exporter writes, span for span, what ``json.dumps`` writes for the OTLP/JSON
object form of the request (the encoder builds the text directly, for speed)."""

from __future__ import annotations

import json
import random
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, Status, StatusCode, set_span_in_context

from callspan.otel.jsonl import encode_spans
from callspan.otlp_json import key_values


class Keep(SpanExporter):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def export(self, spans: Any) -> SpanExportResult:
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS


def reference(spans: list[ReadableSpan]) -> str:
    """The request's object form, dumped: resource, then scopes in first-seen order."""
    resources: dict[int, tuple[Any, dict[Any, list[dict[str, Any]]]]] = {}
    for span in spans:
        scope = span.instrumentation_scope
        key = (scope.name, scope.version, tuple(sorted((scope.attributes or {}).items()))) if scope else None
        resources.setdefault(id(span.resource), (span.resource, {}))[1].setdefault(key, []).append(span_object(span))
    out = []
    for resource, scopes in resources.values():
        scope_spans = []
        for key, objects in scopes.items():
            scope_json: dict[str, Any] = {}
            if key is not None:
                scope_json = {"name": key[0]}
                if key[1]:
                    scope_json["version"] = key[1]
                if key[2]:
                    scope_json["attributes"] = key_values(dict(key[2]))
            scope_spans.append({"scope": scope_json, "spans": objects})
        out.append({"resource": {"attributes": key_values(resource.attributes)}, "scopeSpans": scope_spans})
    return json.dumps({"resourceSpans": out}, separators=(",", ":"))


def span_object(span: ReadableSpan) -> dict[str, Any]:
    context = span.context
    out: dict[str, Any] = {
        "traceId": f"{context.trace_id:032x}", "spanId": f"{context.span_id:016x}", "name": span.name,
        "kind": span.kind.value + 1, "startTimeUnixNano": str(span.start_time),
        "endTimeUnixNano": str(span.end_time), "attributes": key_values(span.attributes), "status": {},
    }
    if span.parent is not None:
        out["parentSpanId"] = f"{span.parent.span_id:016x}"
    if span.events:
        out["events"] = [{"timeUnixNano": str(e.timestamp), "name": e.name, "attributes": key_values(e.attributes)}
                         for e in span.events]
    if span.status.status_code.value:
        out["status"] = {"code": span.status.status_code.value}
        if span.status.description:
            out["status"]["message"] = span.status.description
    return out


def random_attribute(rng: random.Random) -> Any:
    kind = rng.randrange(7)
    if kind == 0:
        return rng.random() < 0.5
    if kind == 1:
        return rng.randrange(-2**63, 2**63)
    if kind == 2:
        return rng.choice([0.0, -1.5, 1e300, rng.random()])
    if kind == 3:
        return "".join(rng.choice(["a", '"', "\\", "\x1b", "é", "\u2028", "\U0001f600"]) for _ in range(rng.randrange(6)))
    if kind == 4:
        return [rng.randrange(-9, 9) for _ in range(rng.randrange(5))]
    if kind == 5:
        return [rng.choice(["x", "\x1b", "é"]) for _ in range(rng.randrange(4))]
    return tuple(rng.random() < 0.5 for _ in range(rng.randrange(3)))


def test_spans_are_encoded_as_their_object_form_dumped() -> None:
    rng = random.Random(11)
    keep = Keep()
    provider = TracerProvider(resource=Resource.create({"service.name": "svc\x1b", "n": 3}))
    provider.add_span_processor(SimpleSpanProcessor(keep))
    tracers = [provider.get_tracer("callspan", "1.0", attributes={"callspan.schema": 2}),
               provider.get_tracer("other")]
    root = None
    for i in range(300):
        attributes = {f"k{j}\u00e9\"" if j % 5 == 0 else f"k{j}": random_attribute(rng)
                      for j in range(rng.randrange(0, 16))}
        context = set_span_in_context(root, Context()) if root is not None and i % 7 else Context()
        span = tracers[i % 2].start_span(f"f{i}\x1b\u2028" if i % 9 == 0 else f"mod.f{i}", context=context,
                                         kind=SpanKind(i % 5), attributes=attributes, start_time=1_000 + i)
        if i % 4 == 0:
            span.add_event("exception" if i % 8 else "e\"", {"n": i, "s": "\x1b"}, timestamp=1_500 + i)
            span.add_event("plain", None, timestamp=1_600 + i)
        if i % 3 == 0:
            span.set_status(Status(StatusCode.ERROR, "boom\x1b\"" if i % 6 else None))
        elif i % 3 == 1:
            span.set_status(Status(StatusCode.OK))
        span.end(end_time=2_000 + i)
        root = root or span
    text = encode_spans(keep.spans)
    assert text == reference(keep.spans)
    assert sum(len(s["spans"]) for r in json.loads(text)["resourceSpans"] for s in r["scopeSpans"]) == 300
    assert encode_spans([]) == reference([]) == '{"resourceSpans":[]}'
