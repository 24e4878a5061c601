"""Identity-hashed self, impurity propagating to callers through the call graph, key sampling."""

from __future__ import annotations

import functools
import pickle
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callspan.analysis import cache
from callspan.analysis.cache import CacheOptions, analyze_calls, key_sampled
from callspan.analysis.loader import LoadOptions, load_files
from callspan.analysis.model import Batch, Links, Model
from callspan.analysis.otlp import add_request, parse_hash
from callspan.analysis.report import Results, opportunity_json, render_json_object, render_text
from tests.analysis import otlp_fixtures
from tests.analysis.otlp_fixtures import calls_event, kvs, model_of, request, span, summary, write

IDENTITY = {"callspan.method": True, "callspan.args.identity": True}
METHOD = {"callspan.method": True}

@pytest.fixture(autouse=True, params=otlp_fixtures.SPILL_MODES)
def memory_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs with the model in memory and with every batch spilled to disk
    (sorted by the compiled column sort and by the Python one)."""
    return otlp_fixtures.spill_modes(request, monkeypatch)



def ops_by_name(model: Model, **options: Any) -> dict[str, cache.Opportunity]:
    return {op.name: op for op in cache.analyze(model, CacheOptions(**options)).opportunities}


def calls(name: str, keys: list[int], returns: list[int], *, first_id: int = 1, cpu: int = 1_000_000,
          extra: dict[str, Any] | None = None, **kw: Any) -> list[dict[str, Any]]:
    """Sequential calls of ``name``: key ``keys[i]`` returning ``returns[i]``."""
    return [span(name, first_id + i, i * 1000, i * 1000 + 500, args=k, ret=r, cpu=cpu, extra=extra, **kw)
            for i, (k, r) in enumerate(zip(keys, returns, strict=True))]


# -- what a cache can never be put on ---------------------------------------------------------

def test_nested_functions_and_stateful_protocol_methods_are_never_recommended() -> None:
    # Each repeats its keys with the same returns and would otherwise be an lru_cache line.
    names = ["m.plain", "m.outer.<locals>.inner", "m.decorate.<locals>.wrapper", "m.Point.__init__",
             "m.Walker.__next__", "m.Session.__exit__", "m.Point.__new__", "m.Point.__hash__"]
    spans: list[dict[str, Any]] = []
    for n, name in enumerate(names):
        spans += calls(name, [1, 2] * 5, [7, 8] * 5, first_id=1 + 100 * n)
    spans += calls("m.total.<locals>.<genexpr>", [1, 2] * 5, [7, 8] * 5, first_id=1000, kind="generator")
    ops = ops_by_name(model_of(request(spans)), lookup_ns=100, min_saved_ns=0)
    assert ops["m.total.<locals>.<genexpr>"].advice.kind == "not_cacheable"  # a generator, said as such
    assert {name: ops[name].advice.kind for name in names} == {
        "m.plain": "lru_cache", "m.Point.__new__": "lru_cache",  # constructors can be cached (sympy's are)
        "m.outer.<locals>.inner": "closure", "m.decorate.<locals>.wrapper": "closure",
        "m.Point.__init__": "not_cacheable", "m.Walker.__next__": "not_cacheable", "m.Session.__exit__": "not_cacheable",
        "m.Point.__hash__": "not_cacheable"}
    inner = ops["m.outer.<locals>.inner"]
    assert inner.advice.text.startswith("defined inside m.outer: a new function object each time")
    assert "move it to module level with what it captures as arguments" in inner.advice.text
    assert ops["m.Walker.__next__"].advice.text.startswith("__next__ is a protocol method that acts on its object")
    assert "a cached __hash__ calls itself until RecursionError" in ops["m.Point.__hash__"].advice.text
    for name in [*names[1:6], "m.Point.__hash__"]:
        op = ops[name]
        assert cache.tier(op.advice.kind) == "not_recommended"
        assert op.advice.paste is None and op.recommended_maxsize is None


def test_a_cached_hash_method_recurses_so_it_is_never_advised() -> None:
    # Why __hash__ is never advised: the paste line would make every hash() of the object fail.
    class Point:
        def __init__(self, x: int) -> None:
            self.x = x

        @functools.lru_cache(maxsize=8)  # noqa: B019 - the point of the test
        def __hash__(self) -> int:
            return hash(self.x)

    with pytest.raises(RecursionError):
        hash(Point(1))


# -- identity-hashed self ----------------------------------------------------------------------

def test_identity_keyed_disagreements_are_collisions_not_inconsistency() -> None:
    # Key 1 returns 10, then 20 (a new cart at the freed cart's address), then 20 again.
    keys, rets = [1, 1, 1, 2, 2], [10, 20, 20, 30, 30]
    op = ops_by_name(model_of(request(calls("m.Cart.total", keys, rets, extra=IDENTITY))))["m.Cart.total"]
    assert op.consistent and op.inconsistent_keys == 0
    assert op.identity and op.identity_collisions == 1
    assert op.advice.kind == "method" and op.advice.paste is None
    assert "per instance (id-based)" in op.advice.text
    assert "keeps every cached instance alive" in op.advice.text
    assert "1 keys returning different values can be address reuse" in op.advice.text
    assert op.recommended_maxsize is None and op.memory_bytes is None
    assert (op.savings.cpu, op.savings.hits, op.share) == (0, 0, 0.0)
    doc = opportunity_json(1, op, 1)
    assert (doc["identity_keys"], doc["identity_key_collisions"], doc["inconsistent_keys"]) == (True, 1, 0)
    assert doc["processes"][0]["identity_key_collisions"] == 1
    # The same calls without callspan.args.identity: a key returning two values is impurity.
    op = ops_by_name(model_of(request(calls("m.Cart.total", keys, rets, extra=METHOD))))["m.Cart.total"]
    assert not op.consistent and op.inconsistent_keys == 1 and op.identity_collisions == 0
    assert op.advice.kind == "inconsistent"


def test_identity_keyed_methods_are_never_recommended_even_when_consistent() -> None:
    keys = [1, 2, 1, 2, 1, 2]
    rets = [k + 1000 for k in keys]
    op = ops_by_name(model_of(request(calls("m.C.area", keys, rets, extra=IDENTITY))))["m.C.area"]
    assert op.consistent and op.hits_unbounded == 4
    assert op.advice.kind == "method" and op.advice.paste is None and op.recommended_maxsize is None
    assert "lru_cache(maxsize" not in op.advice.text
    assert op.savings.cpu == 0
    # A method whose self hashes by value is recommended as before (with the per-instance note).
    op = ops_by_name(model_of(request(calls("m.C.area", keys, rets, extra=METHOD))))["m.C.area"]
    assert op.advice.kind == "lru_cache" and op.recommended_maxsize == 2
    assert "keeps instances alive" in op.advice.text


def test_identity_method_without_repeated_keys_gets_the_identity_text() -> None:
    op = ops_by_name(model_of(request(calls("m.C.f", [1, 2, 3], [1, 2, 3], extra=IDENTITY))))["m.C.f"]
    assert op.advice.kind == "method" and "per instance (id-based)" in op.advice.text
    assert "apparent hits" not in op.advice.text


def test_a_value_hashed_call_disagreeing_in_an_identity_function_is_inconsistent() -> None:
    # Calls 0-1 (identity self) disagree on key 1; calls 2-3 (self hashed by value) on key 2.
    spans = calls("m.C.f", [1, 1], [10, 11], extra=IDENTITY)
    spans += calls("m.C.f", [2, 2], [20, 21], first_id=10, extra=METHOD)
    op = ops_by_name(model_of(request(spans)))["m.C.f"]
    assert (op.identity_collisions, op.inconsistent_keys, op.advice.kind) == (1, 1, "inconsistent")


def test_summarised_calls_follow_the_identity_of_the_functions_spans() -> None:
    # The listed calls of m.C.f disagree on key 5; one span of m.C.f says self hashes by identity.
    event = calls_event("m.C.f", [5, 5], [100, 200], returns=[50, 51])
    root = span("m.root", 1, 0, 1000, cpu=10, extra=summary(["m.C.f"], [2]), events=[event])
    own = span("m.C.f", 2, 300, 310, args=6, ret=60, cpu=10, parent=1, extra=IDENTITY)
    op = ops_by_name(model_of(request([own, root])), min_share=0)["m.C.f"]
    assert (op.identity_collisions, op.inconsistent_keys, op.advice.kind) == (1, 0, "method")
    own_by_value = span("m.C.f", 2, 300, 310, args=6, ret=60, cpu=10, parent=1, extra=METHOD)
    op = ops_by_name(model_of(request([own_by_value, root])), min_share=0)["m.C.f"]
    assert (op.identity_collisions, op.inconsistent_keys, op.advice.kind) == (0, 1, "inconsistent")


def test_identity_from_another_process_applies_to_summarised_calls() -> None:
    # Process A only has summarised (listed) calls of m.C.f; process B has its identity span.
    event = calls_event("m.C.f", [5, 5], [100, 200], returns=[50, 51])
    a = request([span("m.root", 1, 0, 1000, cpu=10, extra=summary(["m.C.f"], [2]), events=[event])],
                instance="A")
    b = request([span("m.C.f", 2, 300, 310, args=6, ret=60, cpu=10, extra=IDENTITY, file="/app/m.C.f.py")],
                instance="B")
    op = ops_by_name(model_of(a, b), min_share=0)["m.C.f"]
    assert (op.identity_collisions, op.inconsistent_keys) == (1, 0)


# -- impurity propagates to callers ------------------------------------------------------------

def service(handler: str, callees: list[str], requests: int = 6, *, first_id: int = 1,
            trace: int = 1) -> list[dict[str, Any]]:
    """``handler`` called with keys 1, 2, 1, 2, ... (consistent returns), each call calling every
    callee once: ``m.request_id`` (key 9) returns a new value each time, ``m.price`` (key 5)
    always 7, anything else its call number."""
    spans: list[dict[str, Any]] = []
    ids = iter(range(first_id, first_id + 1_000_000))
    for i in range(requests):
        t = i * 10_000
        me = next(ids)
        for j, callee in enumerate(callees):
            key, ret = {"m.request_id": (9, 1000 + i + first_id), "m.price": (5, 7)}.get(callee, (50 + i, i))
            spans.append(span(callee, next(ids), t + 10 + 100 * j, t + 90 + 100 * j, parent=me, trace=trace,
                              args=key, ret=ret, cpu=1_000_000))
        spans.append(span(handler, me, t, t + 5_000, trace=trace, args=1 + i % 2, ret=100 + i % 2,
                          cpu=5_000_000, cpu_self=1_000_000))
    return spans


def test_a_caller_of_an_impure_function_is_ranked_with_a_caveat_naming_the_callee() -> None:
    spans = service("m.checkout", ["m.request_id", "m.price"])
    spans += service("m.browse", ["m.price"], first_id=10_000, trace=2)
    ops = ops_by_name(model_of(request(spans)))
    assert ops["m.request_id"].advice.kind == "inconsistent"
    checkout = ops["m.checkout"]
    assert checkout.consistent and checkout.hits_unbounded == 4
    assert checkout.advice.kind == "calls_impure" and checkout.advice.paste is None  # the user decides
    assert checkout.advice.text.startswith("calls impure m.request_id, which returned different values for 1 of "
                                           "1 argument keys (100.0%): caching this function skips those calls")
    assert checkout.impure_callees == ["m.request_id"] and checkout.impure_keys == [(1, 1.0)]
    # Not hidden: its savings and size are those of its own (consistent) returns.
    assert checkout.recommended_maxsize == ops["m.browse"].recommended_maxsize
    assert checkout.savings.cpu > 0 and checkout.share is not None and checkout.share > 0
    assert opportunity_json(1, checkout, 1)["impure_callees"] == ["m.request_id"]
    # The same shape without the impure call, and the pure callee, are recommended without caveat.
    assert ops["m.browse"].advice.kind == "lru_cache" and ops["m.browse"].impure_callees == []
    assert ops["m.price"].advice.kind == "lru_cache" and ops["m.price"].impure_callees == []
    ranked = [op.name for op in cache.analyze(model_of(request(spans))).opportunities]
    assert ranked.index("m.checkout") < ranked.index("m.request_id")  # ranked by savings, not sent last


def test_caveated_advice_is_its_own_tier_after_the_recommended_one() -> None:
    # m.checkout saves 4 hits x 5 ms but calls an impure function; m.price saves 11 x 1 ms, cleanly.
    spans = service("m.checkout", ["m.request_id", "m.price"])
    model = model_of(request(spans))
    report = cache.analyze(model, CacheOptions(lookup_ns=100))
    ops = {op.name: op for op in report.opportunities}
    assert ops["m.checkout"].savings.cpu > ops["m.price"].savings.cpu
    assert [(op.name, cache.tier(op.advice.kind)) for op in report.opportunities] == [
        ("m.price", "recommended"), ("m.checkout", "caveated"), ("m.request_id", "not_recommended")]
    doc = render_json_object(Results(model, ["cache"], cache=report))["cache"]
    assert doc["tiers"] == {"recommended": 1, "caveated": 1, "not_recommended": 1}
    assert [(o["rank"], o["tier"], o["tier_rank"]) for o in doc["opportunities"]] == [
        (1, "recommended", 1), (2, "caveated", 1), (3, "not_recommended", 1)]
    # One table per tier, each with its own top N: --top 1 still shows the caveated m.checkout.
    text = render_text(Results(model, ["cache"], cache=report, top=1))
    tables = [line for line in text.splitlines() if line.startswith(("Recommended", "With a caveat", "Never"))]
    assert [t.split(" ")[0] for t in tables] == ["Recommended,", "With", "Never"]
    assert all(t.endswith(": 1") for t in tables)
    rows = [line.split()[:2] for line in text.splitlines() if line.startswith("  1 m.")]
    assert rows == [["1", "m.price"], ["1", "m.checkout"], ["1", "m.request_id"]]


def caller_of(callee: str, callee_keys: list[int], callee_returns: list[int]) -> list[dict[str, Any]]:
    """m.handler called with keys 1, 2, 1, 2, ... (consistent returns), each call calling
    ``callee`` once with the next of ``callee_keys`` and ``callee_returns``."""
    spans = []
    for i, (key, ret) in enumerate(zip(callee_keys, callee_returns, strict=True)):
        t = i * 10_000
        spans.append(span(callee, 2 * i + 2, t + 10, t + 90, parent=2 * i + 1, args=key, ret=ret, cpu=1_000_000))
        spans.append(span("m.handler", 2 * i + 1, t, t + 5_000, args=1 + i % 2, ret=100 + i % 2, cpu=5_000_000))
    return spans


def test_a_closure_returning_different_values_does_not_make_its_callers_impure() -> None:
    # A factory's getters (one code object, a different captured name each) merge into one function
    # whose keys leave out what each captured: returns that differ for a key are expected.
    keys = [1, 2] * 20
    rets = list(range(40))
    ops = ops_by_name(model_of(request(caller_of("m.make_property.<locals>.getter", keys, rets))), lookup_ns=100)
    assert ops["m.make_property.<locals>.getter"].advice.kind == "closure"
    assert ops["m.make_property.<locals>.getter"].inconsistent_keys == 2
    assert ops["m.handler"].advice.kind == "lru_cache" and ops["m.handler"].impure_callees == []


def test_impurity_propagates_through_intermediate_callers() -> None:
    # m.top -> m.mid -> m.request_id; m.top's and m.mid's own returns are consistent.
    spans = []
    for i in range(4):
        t = i * 1000
        top, mid, rid = 10 * i + 1, 10 * i + 2, 10 * i + 3
        spans.append(span("m.request_id", rid, t + 2, t + 3, parent=mid, args=9, ret=500 + i, cpu=10))
        spans.append(span("m.mid", mid, t + 1, t + 4, parent=top, args=1, ret=2, cpu=1_000_000))
        spans.append(span("m.top", top, t, t + 5, args=1, ret=3, cpu=2_000_000))
    ops = ops_by_name(model_of(request(spans)))
    assert ops["m.mid"].advice.text.startswith("calls impure m.request_id, ")
    assert ops["m.top"].advice.kind == "calls_impure"
    assert ops["m.top"].advice.text.startswith("calls impure m.request_id (via m.mid), ")
    assert ops["m.top"].impure_callees == ["m.request_id"]


def test_impurity_from_identity_collisions_does_not_propagate() -> None:
    spans = []
    for i in range(4):
        t = i * 1000
        spans.append(span("m.Cart.total", 10 * i + 2, t + 1, t + 4, parent=10 * i + 1, args=1, ret=500 + i,
                          cpu=10, extra=IDENTITY))
        spans.append(span("m.handle", 10 * i + 1, t, t + 5, args=1, ret=3, cpu=2_000_000))
    ops = ops_by_name(model_of(request(spans)))
    assert ops["m.Cart.total"].identity_collisions == 1 and ops["m.Cart.total"].consistent
    assert ops["m.handle"].advice.kind == "lru_cache" and ops["m.handle"].impure_callees == []


def test_a_function_summarised_on_a_span_is_called_by_the_spans_function() -> None:
    # m.handle's calls of m.request_id are only summarised on it (listed, disagreeing returns).
    spans = []
    for i in range(4):
        t = i * 1000
        event = calls_event("m.request_id", [9, 9], [t + 1, t + 2], duration=1, returns=[2 * i + 1, 2 * i + 2])
        spans.append(span("m.handle", i + 1, t, t + 10, args=1, ret=3, cpu=2_000_000,
                          extra=summary(["m.request_id"], [2]), events=[event]))
    ops = ops_by_name(model_of(request(spans)))
    assert ops["m.request_id"].advice.kind == "inconsistent"
    assert ops["m.handle"].advice.kind == "calls_impure"
    # Summarised without listed calls: the edge comes from callspan.summary.function alone.
    spans = [span("m.handle", i + 1, i * 1000, i * 1000 + 10, args=1, ret=3, cpu=2_000_000,
                  extra=summary(["m.request_id"], [1])) for i in range(4)]
    spans += calls("m.request_id", [9, 9], [1, 2], first_id=100, cpu=10)  # impure, seen elsewhere
    ops = ops_by_name(model_of(request(spans)))
    assert ops["m.handle"].advice.kind == "calls_impure"


def test_parent_links_are_joined_across_chunks_in_either_order() -> None:
    # Child in the first chunk, its parent in the second (the usual: spans are written as they
    # end); and a task that outlived its creator: the parent in the first chunk, the child later.
    child_first = service("m.checkout", ["m.request_id"])
    parents = [s for s in child_first if s["name"] == "m.checkout"]
    children = [s for s in child_first if s["name"] != "m.checkout"]
    for first, second in ((children, parents), (parents, children)):
        model = otlp_fixtures.new_model()
        for part in (first, second):
            batch = model.new_batch()
            add_request(batch, request(part))
            batch = pickle.loads(pickle.dumps(batch))  # as it comes back from a worker process
            model.merge(batch)
        assert ops_by_name(model)["m.checkout"].advice.kind == "calls_impure"
        # Once joined, only the function-level edges remain.
        assert len(model.call_edges()) == 1 and len(model.links.span) == 0  # type: ignore[union-attr]


def test_links_are_joined_within_a_chunk_and_only_strays_are_kept() -> None:
    batch = Batch()
    add_request(batch, request(service("m.checkout", ["m.request_id", "m.price"])))
    assert batch.links is not None and len(batch.links.parent) == 12
    batch.resolve_links()
    assert len(batch.links.parent) == 0
    names = {i: f.name for i, f in enumerate(batch.functions)}
    assert {(names[a], names[b]) for a, b in batch.links.edges} == {("m.checkout", "m.request_id"),
                                                                     ("m.checkout", "m.price")}


def test_joining_in_small_lookup_chunks_finds_every_parent(monkeypatch: pytest.MonkeyPatch) -> None:
    # Parents arrive after all of their children; the final join scans spans a few at a time.
    spans = service("m.checkout", ["m.request_id", "m.price"]) + service("m.browse", ["m.price"], first_id=500)
    children = [s for s in spans if s["name"] in ("m.request_id", "m.price")]
    parents = [s for s in spans if s not in children]
    model = otlp_fixtures.new_model()
    for part in (children, parents[:5], parents[5:]):
        batch = model.new_batch()
        add_request(batch, request(part))
        model.merge(batch)
    monkeypatch.setattr(Links, "JOIN_CHUNK", 3)
    names = {(model.functions[a].name, model.functions[b].name) for a, b in model.call_edges()}
    assert names == {("m.checkout", "m.request_id"), ("m.checkout", "m.price"), ("m.browse", "m.price")}


def test_chunked_file_reading_finds_the_same_edges(tmp_path: Path) -> None:
    requests = [request([s]) for s in service("m.checkout", ["m.request_id", "m.price"])]
    path = write(str(tmp_path / "t.jsonl"), requests)
    whole = load_files([path], LoadOptions(want_rows=False))
    chunked = load_files([path], LoadOptions(want_rows=False, chunk_bytes=2000, jobs=1))
    assert chunked.requests == whole.requests == 18

    def named(model: Model) -> set[tuple[str, str]]:
        return {(model.functions[a].name, model.functions[b].name) for a, b in model.call_edges()}
    assert named(chunked) == named(whole) == {("m.checkout", "m.request_id"), ("m.checkout", "m.price")}


def test_impurity_seen_in_one_process_applies_to_callers_in_another() -> None:
    # Process A: m.request_id returns different values. Process B: it happens to repeat itself,
    # and m.checkout calls it there.
    a = request(calls("m.request_id", [9, 9], [1, 2], cpu=10), instance="A")
    b_spans = service("m.checkout", ["m.request_id"], first_id=100)
    for s in b_spans:
        if s["name"] == "m.request_id":
            s["attributes"] = [kv for kv in s["attributes"] if kv["key"] != "callspan.return.hash"]
            s["attributes"] += kvs({"callspan.return.hash": "00000000000003e7"})
    b = request(b_spans, instance="B")
    ops = ops_by_name(model_of(a, b))
    assert ops["m.request_id"].processes[1]["inconsistent_keys"] == 0
    assert ops["m.checkout"].advice.kind == "calls_impure"


def test_an_inconsistent_caller_keeps_its_own_advice_and_lists_impure_callees() -> None:
    spans = service("m.checkout", ["m.request_id"])
    for s in spans:  # m.checkout's key 1 now returns a different value each call
        if s["name"] == "m.checkout":
            s["attributes"] += kvs({"callspan.return.hash": f"{int(s['spanId'], 16) + 77:016x}"})
    op = ops_by_name(model_of(request(spans)))["m.checkout"]
    assert op.advice.kind == "inconsistent" and op.impure_callees == ["m.request_id"]


# -- key sampling: the tracer's rule -----------------------------------------------------------

def tracer_rule(args_hash: str, rate: float) -> bool:
    """docs/analysis-json.md, "Key sampling": what the tracer lists."""
    return bool(args_hash) and int(args_hash[:8], 16) < rate * 2**32


@settings(max_examples=300, deadline=None)
@given(st.text("0123456789abcdef", max_size=20), st.integers(min_value=0, max_value=32))
def test_key_sampled_is_the_tracers_rule(args_hash: str, power: int) -> None:
    rate = 2.0 ** -power
    assert key_sampled(parse_hash(args_hash), rate) == tracer_rule(args_hash, rate)


@pytest.mark.parametrize(("args_hash", "rate", "kept"), [
    ("7fffffffffffffff", 0.5, True), ("8000000000000000", 0.5, False),
    ("0000000000000000", 1 / 1024, True), ("003fffffffffffff", 1 / 1024, True),
    ("0040000000000000", 1 / 1024, False),
    # a rate that is not a power of two: the 32-bit comparison, not a 64-bit one
    ("4cccccccf0000000", 0.3, True), ("4ccccccd00000000", 0.3, False),
    # shorter than the schema's 16 digits: still the first 8
    ("abcdef123", 0.75, True), ("abcdef123", 0.5, False), ("abc", 2.0 ** -20, True), ("", 1.0, False),
])
def test_key_sampled_boundaries(args_hash: str, rate: float, kept: bool) -> None:
    assert tracer_rule(args_hash, rate) == kept
    assert key_sampled(parse_hash(args_hash), rate) == kept


def test_shards_replays_exactly_the_calls_the_tracer_would_list() -> None:
    # 64 keys sampled at 0.3 for sure, two on either side of the 32-bit threshold, and keys far
    # above it; as spans (every call) plus one listed batch at rate 0.3.
    rng = random.Random(5)
    keys = [f"{rng.randrange(1 << 60):016x}" for _ in range(64)]
    keys += ["4cccccccf0000000", "4ccccccd00000000"] + [f"{0xF0000000 + i:08x}00000000" for i in range(20)]
    spans = []
    for i, key in enumerate(keys * 2):
        s = span("m.g", 10 + i, 100 * i, 100 * i + 10, ret=7, cpu=10, parent=1)
        s["attributes"] += kvs({"callspan.args.hash": key})
        spans.append(s)
    listed = [k for k in keys if tracer_rule(k, 0.3)]
    event = calls_event("m.g", [], [])
    event["attributes"] = kvs({"callspan.function": "m.g", "callspan.args.hash": listed,
                               "callspan.return.hash": [f"{7:016x}"] * len(listed),
                               "callspan.start_ns": [10**6 + i for i in range(len(listed))],
                               "callspan.end_ns": [10**6 + i + 1 for i in range(len(listed))],
                               "callspan.cpu": [1] * len(listed), "callspan.sample_rate": 0.3})
    root = span("m.root", 1, 0, 10**7, cpu=10, extra=summary(["m.g"], [len(keys)]), events=[event])
    model = model_of(request([*spans, root]))
    index = next(i for i, f in enumerate(model.functions) if f.name == "m.g")
    source = model.call_source(index)
    assert source is not None
    result = analyze_calls(index, model.functions[index], source)
    assert len(listed) == 65  # the 64, and 4cccccccf0000000
    assert result.estimator == "shards"
    assert result.accesses == 3 * 65  # two rounds of spans and the listed round, sampled keys only
    # the keys replayed are the sampled ones: 65 distinct, scaled by 1 / rate
    assert result.distinct_keys == 65 * (1.0 / 0.3)


@pytest.mark.parametrize("args_hash", ["abcdef123", "abc", "0123456789abcdef", "0123456789abcdef99"])
def test_span_and_listed_call_keys_are_parsed_alike(args_hash: str) -> None:
    # The span reader's fast path and parse_hash (listed calls) give the same 64-bit keys and returns.
    own = span("m.g", 2, 10, 20, cpu=10, parent=1)
    own["attributes"] += kvs({"callspan.args.hash": args_hash, "callspan.return.hash": args_hash})
    event = calls_event("m.g", [], [])
    event["attributes"] = kvs({"callspan.function": "m.g", "callspan.args.hash": [args_hash],
                               "callspan.return.hash": [args_hash], "callspan.start_ns": [30],
                               "callspan.end_ns": [31], "callspan.cpu": [1], "callspan.sample_rate": 1.0})
    model = model_of(request([own, span("m.root", 1, 0, 100, extra=summary(["m.g"], [1]), events=[event])]))
    source = model.call_source(next(i for i, f in enumerate(model.functions) if f.name == "m.g"))
    assert source is not None
    columns = source.gather()
    assert list(columns.args) == [parse_hash(args_hash)] * 2
    assert list(columns.ret) == [parse_hash(args_hash)] * 2  # so the two calls agree
    assert key_sampled(columns.args[0], 2.0 ** -8) == tracer_rule(args_hash, 2.0 ** -8)


@pytest.mark.parametrize("want_rows", [True, False])
def test_links_share_the_rows_span_arrays_and_find_the_same_edges(want_rows: bool) -> None:
    # A recursive function summarised under itself (no self edge from the summary), a summarised
    # callee, a span without an id, and a parent that arrives in a later chunk.
    root = span("m.root", 1, 0, 1000, extra=summary(["m.rec", "m.leaf"], [2, 3]))
    rec = span("m.rec", 2, 10, 500, parent=1, extra=summary(["m.rec"], [4]))
    anonymous = span("m.anon", 3, 20, 30, parent=2)
    anonymous["spanId"] = ""
    child = span("m.child", 4, 40, 50, parent=9)
    late_parent = span("m.late", 9, 0, 60)
    model = otlp_fixtures.new_model(want_rows=want_rows)
    for part in ([anonymous, rec, child], [root, late_parent]):
        batch = model.new_batch()
        add_request(batch, request(part))
        assert batch.links is not None
        assert (batch.links.span is batch.rows.span) == want_rows
        model.merge(pickle.loads(pickle.dumps(batch)))
    names = [f.name for f in model.functions]
    assert {(names[a], names[b]) for a, b in model.call_edges()} == {
        ("m.root", "m.rec"), ("m.root", "m.leaf"), ("m.rec", "m.anon"), ("m.late", "m.child")}


# -- a few inconsistent keys among many (issue 11 item 3) ---------------------------------------

@pytest.mark.parametrize(("bad_keys", "kind"), [(1, "mostly_consistent"), (2, "mostly_consistent"),
                                                (3, "inconsistent")])
def test_a_few_inconsistent_keys_of_many_are_shown_with_their_share(bad_keys: int, kind: str) -> None:
    # 40 keys called three times each; ``bad_keys`` of them return a different value the third time.
    keys = [k for _ in range(3) for k in range(1, 41)]
    rets = [k * 10 + (1 if i >= 80 and k <= bad_keys else 0) for i, k in enumerate(keys)]
    op = ops_by_name(model_of(request(calls("m.rate", keys, rets))), lookup_ns=100)["m.rate"]
    assert op.inconsistent_keys == bad_keys and op.distinct_keys == 40
    assert op.inconsistent_share == pytest.approx(bad_keys / 40)
    assert op.advice.kind == kind and op.advice.paste is None
    assert f"{bad_keys} of 40 argument keys ({bad_keys / 40:.1%}) returned different values" in op.advice.text
    doc = opportunity_json(1, op, 1)
    assert doc["inconsistent_share"] == pytest.approx(bad_keys / 40)
    if kind == "mostly_consistent":  # ranked by its savings: the user decides
        assert op.recommended_maxsize == 40 and op.savings.hits == 80 and op.savings.cpu == 80 * 1_000_000
    else:
        assert op.recommended_maxsize is None and op.savings.cpu == 0
