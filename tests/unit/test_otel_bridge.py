"""The boundary: spans go through the application's own TracerProvider, by the SDK's rules."""

from __future__ import annotations

import json

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import StatusCode

import callspan
from callspan.cores.select import available_cores
from callspan.otel.jsonl import OtlpJsonLinesExporter


def inner(x: int) -> int:
    if x < 0:
        raise KeyError(x)
    return x * 2


def outer(x: int) -> int:
    return inner(x) + inner(x)


def provider_with_memory(**kwargs):  # type: ignore[no-untyped-def]
    provider = TracerProvider(resource=Resource.create({"service.name": "unit"}), **kwargs)
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    return provider, memory


def test_spans_use_the_users_provider_and_nest_inside_the_current_span() -> None:
    provider, memory = provider_with_memory()
    tracer = provider.get_tracer("app")
    with tracer.start_as_current_span("http request") as request_span:
        with callspan.tracing(tracer_provider=provider, cpu="thread"):
            assert outer(2) == 8
    spans = {s.name: s for s in memory.get_finished_spans()}
    names = sorted(s.name for s in memory.get_finished_spans())
    assert names == ["http request", f"{__name__}.inner", f"{__name__}.inner", f"{__name__}.outer"]
    o = spans[f"{__name__}.outer"]
    assert o.parent is not None and o.parent.span_id == request_span.get_span_context().span_id
    assert o.context.trace_id == request_span.get_span_context().trace_id
    inners = [s for s in memory.get_finished_spans() if s.name.endswith(".inner")]
    assert all(s.parent.span_id == o.context.span_id for s in inners)
    assert o.resource.attributes["service.name"] == "unit"
    scope = o.instrumentation_scope
    assert scope.name == "callspan"
    assert scope.attributes["callspan.cpu.counter"] in ("thread_time", "perf:instructions")
    assert scope.attributes["callspan.core"] == available_cores()[0]  # the best one is chosen
    assert o.kind == trace.SpanKind.INTERNAL
    assert o.attributes["callspan.cpu.total"] >= o.attributes["callspan.cpu.self"] >= 0
    assert o.start_time <= inners[0].start_time <= inners[0].end_time <= o.end_time


def test_errors_become_error_status() -> None:
    provider, memory = provider_with_memory()

    @callspan.traced(tracer_provider=provider)
    def entry() -> str:
        try:
            inner(-1)
        except KeyError:
            return "caught"
        return "no"

    assert entry() == "caught"
    (failed,) = [s for s in memory.get_finished_spans() if s.name.endswith(".inner")]
    assert failed.status.status_code == StatusCode.ERROR
    assert failed.attributes["error.type"] in ("builtins.KeyError", "_OTHER")


def test_the_users_sampler_decides() -> None:
    provider, memory = provider_with_memory(sampler=ALWAYS_OFF)
    with callspan.tracing(tracer_provider=provider):
        outer(1)
    assert memory.get_finished_spans() == ()


def test_async_decorator_traces_the_coroutine() -> None:
    import asyncio

    provider, memory = provider_with_memory()

    @callspan.traced(tracer_provider=provider)
    async def handler() -> int:
        await asyncio.sleep(0)
        return outer(1)

    assert asyncio.run(handler()) == 4
    names = sorted(s.name.rsplit(".", 1)[-1] for s in memory.get_finished_spans())
    assert names == ["handler", "inner", "inner", "outer"]
    (h,) = [s for s in memory.get_finished_spans() if s.name.endswith("handler")]
    assert h.attributes["callspan.await.count"] == 1


def test_jsonl_exporter_writes_otlp_json(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "out.jsonl"
    provider = TracerProvider(resource=Resource.create({"service.name": "unit"}))
    provider.add_span_processor(SimpleSpanProcessor(OtlpJsonLinesExporter(str(path))))
    with callspan.tracing(tracer_provider=provider, keys="on"):
        try:
            outer(-1)
        except KeyError:
            pass
    provider.shutdown()
    lines = path.read_text().splitlines()
    spans = [s for line in lines for rs in json.loads(line)["resourceSpans"]
             for ss in rs["scopeSpans"] for s in ss["spans"]]
    assert len(spans) == 2
    by_name = {s["name"].rsplit(".", 1)[-1]: s for s in spans}
    o, i = by_name["outer"], by_name["inner"]
    assert len(o["traceId"]) == 32 and len(o["spanId"]) == 16
    assert i["parentSpanId"] == o["spanId"] and "parentSpanId" not in o
    assert isinstance(o["startTimeUnixNano"], str) and int(o["endTimeUnixNano"]) >= int(o["startTimeUnixNano"])
    assert o["kind"] == 1 and i["status"]["code"] == 2
    attrs = {a["key"]: a["value"] for a in o["attributes"]}
    assert attrs["code.line.number"] == {"intValue": str(outer.__code__.co_firstlineno)}
    assert attrs["callspan.args.hashable"] == {"boolValue": True}
    assert list(attrs["callspan.args.hash"]) == ["stringValue"]
    rs = json.loads(lines[0])["resourceSpans"][0]
    assert {"key": "service.name", "value": {"stringValue": "unit"}} in rs["resource"]["attributes"]


def test_context_getter_returns_what_get_current_returns() -> None:
    from opentelemetry import context as otel_context

    from callspan.otel.bridge import current_context_getter

    getter = current_context_getter()
    provider = TracerProvider()
    with provider.get_tracer("t").start_as_current_span("outer"):
        assert getter() is otel_context.get_current()
        token = otel_context.attach(otel_context.set_value("k", 1))
        try:
            assert getter() is otel_context.get_current() and getter().get("k") == 1
        finally:
            otel_context.detach(token)
    assert getter() is otel_context.get_current()
