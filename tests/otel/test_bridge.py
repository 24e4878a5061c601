"""The boundary: spans go through the application's own TracerProvider, by the SDK's rules."""

from __future__ import annotations

import json
from collections import Counter

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import StatusCode

import callspan
from callspan.otel.jsonl import OtlpJsonLinesExporter
from callspan.tracer.cores.select import available_cores


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
    names = sorted(s.name for s in memory.get_finished_spans() if s.name != "callspan.profile")
    assert names == ["http request", f"{__name__}.inner", f"{__name__}.inner", f"{__name__}.outer"]
    # The aggregates: one window at stop, a root span of its own (not under the request).
    (profile,) = [s for s in memory.get_finished_spans() if s.name == "callspan.profile"]
    assert profile.parent is None and profile.attributes["callspan.profile.final"] is True
    calls = dict(zip(profile.attributes["callspan.profile.function.name"],
                     profile.attributes["callspan.profile.function.calls"], strict=True))
    assert calls == {f"{__name__}.outer": 1, f"{__name__}.inner": 2}
    assert profile.instrumentation_scope.attributes["callspan.schema"] == 2
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


class StartAttributes(SimpleSpanProcessor):
    """Records which attributes each span has when it starts."""

    def __init__(self) -> None:
        super().__init__(InMemorySpanExporter())
        self.at_start: dict[str, list[set[str]]] = {}

    def on_start(self, span, parent_context=None) -> None:  # type: ignore[no-untyped-def]
        self.at_start.setdefault(span.name, []).append(set(span.attributes or {}))


def test_a_finished_calls_span_starts_with_its_final_attributes() -> None:
    # outer's span opens when its first callee's closes (outer still running): its end attributes
    # come at close; the callees had finished before their spans opened: all at once. The
    # exported attributes are the same either way.
    provider, memory = provider_with_memory()
    starts = StartAttributes()
    provider.add_span_processor(starts)
    with callspan.tracing(tracer_provider=provider, cpu="thread", background=False):
        assert outer(3) == 12
    end_keys = {"callspan.run_ns", "callspan.cpu.total", "callspan.cpu.self", "callspan.args.hash",
                "callspan.return.hash"}
    assert all(end_keys <= keys for keys in starts.at_start[f"{__name__}.inner"])
    (outer_start,) = starts.at_start[f"{__name__}.outer"]
    assert not end_keys & outer_start
    for span in memory.get_finished_spans():
        if span.name != "callspan.profile":
            assert end_keys <= set(span.attributes), span.name


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
    names = sorted(s.name.rsplit(".", 1)[-1] for s in memory.get_finished_spans() if s.name != "callspan.profile")
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
    every = [s for line in lines for rs in json.loads(line)["resourceSpans"]
             for ss in rs["scopeSpans"] for s in ss["spans"]]
    spans = [s for s in every if s["name"] != "callspan.profile"]
    assert len(spans) == 2
    (profile,) = [s for s in every if s["name"] == "callspan.profile"]
    columns = {a["key"]: a["value"] for a in profile["attributes"]}
    assert columns["callspan.profile.node.calls"] == {"arrayValue": {"values": [
        {"intValue": "0"}, {"intValue": "1"}, {"intValue": "1"}]}}  # thread root, outer, inner
    assert columns["callspan.profile.node.errors"]["arrayValue"]["values"][1:] == [{"intValue": "1"}] * 2
    by_name = {s["name"].rsplit(".", 1)[-1]: s for s in spans}
    o, i = by_name["outer"], by_name["inner"]
    assert len(o["traceId"]) == 32 and len(o["spanId"]) == 16
    assert i["parentSpanId"] == o["spanId"] and "parentSpanId" not in o
    assert isinstance(o["startTimeUnixNano"], str) and int(o["endTimeUnixNano"]) >= int(o["startTimeUnixNano"])
    assert o["kind"] == 1 and i["status"]["code"] == 2
    attrs = {a["key"]: a["value"] for a in o["attributes"]}
    assert attrs["code.line.number"] == {"intValue": str(outer.__code__.co_firstlineno)}
    assert "callspan.args.hashable" not in attrs  # written only when false
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


def test_a_window_of_200k_stacks_is_chunked_below_the_collectors_message_limit() -> None:
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    from callspan.otel.bridge import PROFILE_CHUNK_ROWS, chunk_window
    from callspan.tracer.aggregate import Aggregates
    from callspan.tracer.selection import CodeInfo

    def make(i: int) -> CodeInfo:
        code = compile(f"def f{i}(): pass", f"/srv/app/module_{i % 97}.py", "exec").co_consts[0]
        return CodeInfo(code, f"app.module_{i % 97}", True)

    infos = [make(i) for i in range(2100)]
    aggregates = Aggregates(max_nodes=300_000)
    root = aggregates.thread_root("MainThread")
    made = 0
    for a in infos[:100]:  # 100 x 2000 = 200,000 distinct two-level stacks
        top = aggregates.child(root, a)
        for b in infos[100:]:
            node = aggregates.child(top, b)
            aggregates.fold(b, node, False, False, 1000 + made, 900, 100, 1, 5000, 0)
            made += 1
    columns = aggregates.export_window()
    assert len(columns["node.id"]) == 1 + 100 + 200_000
    data = {k: v for k, v in columns.items() if k not in ("window", "other_nodes")}
    chunks = chunk_window(data)
    assert len(chunks) >= 200_000 // PROFILE_CHUNK_ROWS
    # Nothing lost or repeated by chunking.
    assert sorted(i for c in chunks for i in c.get("node.id", [])) == sorted(columns["node.id"])
    assert sum(sum(c["function.calls"]) for c in chunks) == sum(columns["function.calls"]) == 200_000
    # Each function's totals in exactly one chunk; no chunk past the row budget in any group.
    owners = Counter(f for c in chunks for f, calls in zip(c["function.id"], c["function.calls"], strict=True) if calls)
    assert set(owners.values()) == {1} and len(owners) == 2000
    for chunk in chunks:
        grouped = sum(len(chunk.get(f"{group}function", [])) for group in ("node.", "wall.", "run.", "cache.", "reuse."))
        assert grouped <= PROFILE_CHUNK_ROWS
        assert len(chunk["function.id"]) <= 2 * PROFILE_CHUNK_ROWS
    provider, memory = provider_with_memory()
    tracer = provider.get_tracer("callspan")
    biggest = 0
    for chunk in chunks:
        defined = set(chunk["function.id"])
        assert set(chunk.get("node.function", [])) - {0} <= defined
        span = tracer.start_span("callspan.profile", attributes={f"callspan.profile.{k}": v for k, v in chunk.items() if v})
        span.end()
        (finished,) = memory.get_finished_spans()
        memory.clear()
        biggest = max(biggest, len(encode_spans([finished]).SerializeToString()))
    assert biggest < 4 * 1024 * 1024 // 2, biggest  # half the Collector's default gRPC limit


def test_chunks_fill_up_to_the_row_budget_and_carry_each_total_once() -> None:
    from callspan.otel.bridge import chunk_window

    columns = {"function.id": [1, 2, 3], "function.name": ["a", "b", "c"], "function.calls": [10, 20, 30],
               "node.id": [1, 2, 3, 4, 5], "node.function": [1, 2, 3, 1, 2],
               "wall.function": [3, 3], "wall.bucket": [5, 6], "wall.count": [7, 8]}
    assert chunk_window(columns, size=4) == [
        # the function table (3 rows, with the totals) and the first node
        {"node.id": [1], "node.function": [1], "function.id": [1, 2, 3], "function.name": ["a", "b", "c"],
         "function.calls": [10, 20, 30]},
        # four nodes, and the functions they reference without totals
        {"node.id": [2, 3, 4, 5], "node.function": [2, 3, 1, 2], "function.id": [1, 2, 3],
         "function.name": ["a", "b", "c"], "function.calls": [0, 0, 0]},
        {"wall.function": [3, 3], "wall.bucket": [5, 6], "wall.count": [7, 8], "function.id": [3],
         "function.name": ["c"], "function.calls": [0]},
    ]
    assert chunk_window({}, size=4) == [{}]


def test_every_chunk_of_a_window_says_its_number_and_the_running_call_count() -> None:
    from callspan.otel.bridge import PROFILE_CHUNK_ROWS, OtelSink
    from callspan.tracer.session import SessionFacts

    provider, memory = provider_with_memory()
    sink = OtelSink(provider)
    sink.bind(SessionFacts(core="csysmon", core_reason="", cpu_counter="none", cpu_unit="", cpu_reason=""))
    nodes = PROFILE_CHUNK_ROWS + 10
    sink.profile({"window": [4], "other_nodes": [0], "lost_calls": [0], "calls_total": [12_345],
                  "function.id": [1], "function.name": ["app.f"], "function.calls": [nodes],
                  "node.id": list(range(1, nodes + 1)), "node.function": [1] * nodes}, 0, 10, False)
    chunks = [dict(span.attributes) for span in memory.get_finished_spans()]
    assert len(chunks) == 2
    assert [(c["callspan.profile.window"], c["callspan.profile.chunk"], c["callspan.profile.calls_total"])
            for c in chunks] == [(4, 0, 12_345), (4, 1, 12_345)]
