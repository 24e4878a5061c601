"""Cache analysis: LRU hits at every size equal functools.lru_cache's, consistency, SHARDS, advice."""

from __future__ import annotations

import functools
import itertools
import random
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callspan.analysis import cache
from callspan.analysis.cache import CacheOptions, analyze_calls, lru_histogram
from callspan.analysis.model import (
    F_ERROR,
    F_IDENTITY,
    F_NO_ARGS,
    F_SUMMARY,
    F_UNHASHABLE,
    S_CALLS,
    Batch,
    CallColumns,
    FunctionInfo,
    Model,
)
from callspan.analysis.otlp import add_request
from tests.analysis import otlp_fixtures
from tests.analysis.otlp_fixtures import (
    calls_event,
    hexkey,
    key_sequence_spans,
    kvs,
    model_of,
    request,
    span,
    summary,
)


@pytest.fixture(autouse=True, params=otlp_fixtures.SPILL_MODES)
def memory_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs with the model in memory and with every batch spilled to disk
    (sorted by the compiled column sort and by the Python one)."""
    return otlp_fixtures.spill_modes(request, monkeypatch)



def real_lru_hits(keys: list[int], maxsize: int | None) -> int:
    """What functools.lru_cache(maxsize) reports for calls with these arguments, in order."""
    cached = functools.lru_cache(maxsize=maxsize)(lambda key: key * 2)
    for key in keys:
        cached(key)
    return cached.cache_info().hits


def replay(model: Model, name: str) -> cache.ProcessResult:
    index = next(i for i, f in enumerate(model.functions) if f.name == name)
    source = model.call_source(index)
    assert source is not None
    return analyze_calls(index, model.functions[index], source)


def hits_at(result: cache.ProcessResult, size: int) -> float:
    return result.hits_at(size)


def opportunity(model: Model, name: str, **options: Any) -> cache.Opportunity:
    report = cache.analyze(model, CacheOptions(**options))
    for op in report.opportunities:
        if op.name == name:
            return op
    raise AssertionError(f"{name} not among {[op.name for op in report.opportunities]}")


# -- the stack-distance algorithm against the real lru_cache -------------------------------------

@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=25), max_size=250))
def test_histogram_hits_equal_functools_lru_cache_at_every_size(keys: list[int]) -> None:
    hist, cold = lru_histogram(keys)
    distinct = len(set(keys))
    assert cold == distinct
    for maxsize in range(0, distinct + 3):
        assert sum(hist[1:maxsize + 1]) == real_lru_hits(keys, maxsize), maxsize
    assert sum(hist) == real_lru_hits(keys, None)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=300))
def test_spans_through_the_reader_give_lru_cache_hits_at_every_size(keys: list[int]) -> None:
    """The whole path: OTLP JSON spans -> model -> replay, compared with functools.lru_cache."""
    model = model_of(request(key_sequence_spans("m.f", keys)))
    result = replay(model, "m.f")
    for maxsize in range(0, len(set(keys)) + 3):
        assert hits_at(result, maxsize) == real_lru_hits(keys, maxsize), maxsize
    assert result.hits_unbounded == real_lru_hits(keys, None)
    assert result.distinct_keys == len(set(keys))


def planted_cyclic_scan(k: int, rounds: int) -> list[int]:
    return [1 + i % k for i in range(k * rounds)]


def planted_working_set() -> list[int]:
    # 3 hot keys, each followed by a never-repeated cold key: the hot key's distance is 6.
    cold = itertools.count(100)
    return [x for _ in range(10) for hot in (1, 2, 3) for x in (hot, next(cold))]


def planted_zipf(seed: int) -> list[int]:
    rng = random.Random(seed)
    return [1 + int(50 * rng.random() ** 3) for _ in range(2000)]


@pytest.mark.parametrize("keys", [
    planted_cyclic_scan(8, 5), planted_working_set(), planted_zipf(1), planted_zipf(2),
    [5] * 50, list(range(1, 200)), [1, 2, 1, 3, 1, 4, 2, 5, 3, 1],
], ids=["cyclic-scan", "working-set", "zipf-1", "zipf-2", "one-key", "all-distinct", "mixed"])
def test_planted_workloads_match_lru_cache(keys: list[int]) -> None:
    result = replay(model_of(request(key_sequence_spans("m.f", keys))), "m.f")
    for maxsize in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 32, 64, 128, 256]:
        assert hits_at(result, maxsize) == real_lru_hits(keys, maxsize), maxsize


def test_cyclic_scan_hand_computed() -> None:
    # LRU's worst case: 8 keys in a loop hit nothing below size 8, everything after round 1 at 8.
    result = replay(model_of(request(key_sequence_spans("m.f", planted_cyclic_scan(8, 5)))), "m.f")
    assert [hits_at(result, n) for n in (1, 7, 8, 100)] == [0, 0, 32, 32]
    assert result.steps == [(8, 32.0)]


def test_working_set_hand_computed() -> None:
    # Between two uses of a hot key: 2 other hot keys and 3 cold keys -> distance 6.
    result = replay(model_of(request(key_sequence_spans("m.f", planted_working_set()))), "m.f")
    assert hits_at(result, 5) == 0
    assert hits_at(result, 6) == 27  # 3 hot keys x 9 repeats


def test_calls_are_replayed_in_start_order_not_arrival_order() -> None:
    spans = key_sequence_spans("m.f", [1, 2, 1])
    # arrival order 3rd, 1st, 2nd: start order is still 1, 2, 1 -> one hit at size 2, none at 1
    model = model_of(request([spans[2], spans[0], spans[1]]))
    result = replay(model, "m.f")
    assert (hits_at(result, 1), hits_at(result, 2)) == (0, 1)


def test_a_call_that_raised_is_a_miss_that_does_not_enter_the_cache() -> None:
    # A, B(raised), A at size 1: B never gets cached, so A is still there -> hit (as lru_cache).
    spans = [span("m.f", 1, 0, 5, args=1, ret=2, cpu=1), span("m.f", 2, 10, 15, args=9, error=True, cpu=1),
             span("m.f", 3, 20, 25, args=1, ret=2, cpu=1)]
    result = replay(model_of(request(spans)), "m.f")
    assert hits_at(result, 1) == 1
    assert result.accesses == 3


def test_calls_without_a_key_are_misses() -> None:
    spans = [span("m.f", 1, 0, 5, args=1, ret=2), span("m.f", 2, 10, 15),  # no args hash
             span("m.f", 3, 20, 25, args=1, ret=2)]
    result = replay(model_of(request(spans)), "m.f")
    assert result.hits_unbounded == 1
    assert hits_at(result, 1) == 1


# -- opportunities ---------------------------------------------------------------------------------

def test_recommended_maxsize_is_the_smallest_reaching_the_target() -> None:
    # working set: all 27 hits need size 6; one big function so that it is worth it.
    keys = planted_working_set()
    model = model_of(request(key_sequence_spans("m.f", keys, cpu=100_000)))
    op = opportunity(model, "m.f")
    assert op.recommended_maxsize == 6
    assert op.calls == 60 and op.distinct_keys == 33
    assert op.hit_ratio == pytest.approx(27 / 60)
    assert op.hit_ratio_at_128 == pytest.approx(27 / 60)
    assert op.advice.kind == "lru_cache"
    assert op.advice.paste == "@functools.lru_cache(maxsize=6)  # /app/m.py:10"
    assert op.consistent and op.inconsistent_keys == 0
    # CPU saved: the 27 hit calls of 100,000 ns; the share of all self CPU (60 calls).
    assert op.savings.cpu == 27 * 100_000
    assert op.savings.wall == 27 * 500
    assert op.share == pytest.approx(27 / 60)
    assert op.memory_bytes == 6 * 32


def test_target_option_changes_the_recommendation() -> None:
    # Keys 1..4 cycled then key 1 repeated: distances 4 (x4 per round) and 1.
    keys = [1, 2, 3, 4] * 3 + [1] * 8
    model = model_of(request(key_sequence_spans("m.f", keys, cpu=100_000)))
    # hits: 8 at size 1 (the repeats of 1 ... the first repeat has distance 4): count exactly
    result = replay(model, "m.f")
    assert [hits_at(result, n) for n in (1, 3, 4)] == [7, 7, 16]
    assert opportunity(model, "m.f", target=0.95).recommended_maxsize == 4
    assert opportunity(model, "m.f", target=0.4).recommended_maxsize == 1


def test_inconsistent_returns_are_never_recommended() -> None:
    keys = [1, 1, 2, 2, 1]
    spans = key_sequence_spans("m.f", keys, cpu=100_000)
    spans[4] = span("m.f", 99, 5000, 5100, args=1, ret=777, cpu=100_000)  # key 1 returned another value
    op = opportunity(model_of(request(spans)), "m.f")
    assert not op.consistent
    assert op.inconsistent_keys == 1
    assert op.recommended_maxsize is None
    assert op.advice.kind == "inconsistent" and op.advice.paste is None
    assert op.savings.cpu == 0


def test_calls_that_raised_do_not_make_a_function_inconsistent() -> None:
    spans = key_sequence_spans("m.f", [1, 1, 1], cpu=100_000)
    spans.append(span("m.f", 50, 9000, 9100, args=1, error=True, cpu=100_000))
    op = opportunity(model_of(request(spans)), "m.f")
    assert op.consistent and op.errors == 1


def test_savings_count_nested_recursive_hits_once() -> None:
    # f(A) [0,10]; f(A) [20,60] containing f(A) [30,40] on the same thread: both later calls hit,
    # but the nested one's CPU is already inside the outer one's callspan.cpu.total.
    spans = [span("m.f", 1, 0, 10, args=1, ret=2, cpu=10_000_000),
             span("m.f", 2, 20, 60, args=1, ret=2, cpu=40_000_000),
             span("m.f", 3, 30, 40, args=1, ret=2, cpu=30_000_000, parent=2)]
    op = opportunity(model_of(request(spans)), "m.f")
    assert op.savings.hits == 2
    assert op.savings.cpu == 40_000_000
    assert op.savings.wall == 40


def test_coroutines_get_async_advice_and_overlaps_are_counted() -> None:
    # Same key: [0,100] and [50,150] overlap (a second identical call while the first is in flight),
    # [200,250] does not.
    spans = [span("m.fetch", i + 1, s, e, args=7, ret=8, cpu=1_000_000, kind="coroutine")
             for i, (s, e) in enumerate([(0, 100), (50, 150), (200, 250)])]
    op = opportunity(model_of(request(spans)), "m.fetch")
    assert op.overlapping == 1
    assert op.advice.kind == "inflight_coalescing"
    assert "1 calls started while an identical call was still running" in op.advice.text
    assert op.advice.paste is None
    # without overlap: async cache
    spans = [span("m.fetch", i + 1, s, e, args=7, ret=8, cpu=1_000_000, kind="coroutine")
             for i, (s, e) in enumerate([(0, 100), (200, 250)])]
    op = opportunity(model_of(request(spans)), "m.fetch")
    assert (op.overlapping, op.advice.kind) == (0, "async_cache")
    assert "coroutine object" in op.advice.text


def test_unhashable_arguments_are_named_and_never_get_a_bare_lru_cache_line() -> None:
    extra = {"callspan.args.hashable": False, "callspan.args.unhashable": "items:list,table:dict"}
    spans = key_sequence_spans("m.f", [1, 1, 1], cpu=1_000_000, extra=extra)
    op = opportunity(model_of(request(spans)), "m.f")
    assert op.advice.kind == "lru_cache_convert_args"
    assert op.unhashable_types == ["dict", "list"]
    assert op.unhashable_args == [("items", "list"), ("table", "dict")]
    assert "convert items (list) to a tuple, table (dict) to a frozenset of its items" in op.advice.text
    assert op.advice.paste is None  # a bare @lru_cache would raise TypeError on the first call
    assert op.recommended_maxsize == 1


def test_unhashable_arguments_from_older_tracers_name_types_only() -> None:
    extra = {"callspan.args.hashable": False, "callspan.args.unhashable": "list,dict"}
    spans = key_sequence_spans("m.f", [1, 1, 1], cpu=1_000_000, extra=extra)
    op = opportunity(model_of(request(spans)), "m.f")
    assert op.advice.kind == "lru_cache_convert_args" and op.advice.paste is None
    assert op.unhashable_args == [("?", "dict"), ("?", "list")]
    assert "some arguments are unhashable (dict, list" in op.advice.text


def test_a_function_whose_user_hash_was_too_slow_is_listed_with_that_reason() -> None:
    # The tracer keyed two calls, then stopped calling the argument's __hash__ (Name:slow-hash):
    # no key repeated, yet the function is listed, never recommended, with the reason.
    keyed = key_sequence_spans("m.f", [1, 2], cpu=1_000_000)
    stopped = [span("m.f", 10 + i, 5000 + 1000 * i, 5500 + 1000 * i, cpu=1_000_000,
                    extra={"callspan.args.hashable": False, "callspan.args.unhashable": "Costly:slow-hash"})
               for i in range(5)]
    report = cache.analyze(model_of(request(keyed + stopped)), CacheOptions(lookup_ns=80))
    (op,) = [o for o in report.opportunities if o.name == "m.f"]
    assert op.advice.kind == "slow_hash" and cache.tier(op.advice.kind) == "not_recommended"
    assert op.advice.text.startswith("user __hash__ too slow to key: the __hash__ of Costly took over 10 us")
    assert op.advice.paste is None
    assert report.functions_without_reuse == 0
    # A function none of whose calls was keyed (its first hash already too slow) is counted apart.
    report = cache.analyze(model_of(request(stopped)), CacheOptions(lookup_ns=80))
    assert (report.functions_without_keys, report.functions_without_keys_slow_hash) == (1, 1)
    assert cache.analyze(model_of(request(keyed + stopped)), CacheOptions()).functions_without_keys_slow_hash == 0
    # Without the tracer's stop, the same two keyed calls are a function without reuse (not listed).
    report = cache.analyze(model_of(request(keyed)), CacheOptions(lookup_ns=80))
    assert report.opportunities == [] and report.functions_without_reuse == 1


def test_methods_whose_self_makes_every_key_distinct() -> None:
    spans = key_sequence_spans("m.C.area", [1, 2, 3, 4], cpu=1_000_000, extra={"callspan.method": True})
    op = opportunity(model_of(request(spans)), "m.C.area")
    assert op.method and op.hits_unbounded == 0
    assert op.advice.kind == "method"
    assert "self is part of the cache key" in op.advice.text
    assert op.recommended_maxsize is None


def test_cheap_functions_are_not_worth_it() -> None:
    # 100 ns per call is less than 2x an lru_cache hit (taken as 80 ns here; measured by default).
    # The advice says why, with the numbers (the lookup cost and the savings against the floor).
    op = opportunity(model_of(request(key_sequence_spans("m.f", [1] * 10, cpu=100))), "m.f", lookup_ns=80)
    assert op.advice.kind == "not_worth_it"
    assert "a call costs ~100 ns CPU, less than 2x a functools.lru_cache hit (80 ns, option here)" \
        in op.advice.text
    assert "would save 900 ns CPU at maxsize=1, below the 1 ms floor" in op.advice.text
    assert op.advice.paste is None
    # Judged against the lookup cost alone (no floor), 170 ns is still less than 2 lookups, 200 is not.
    for cost, kind in ((170, "not_worth_it"), (200, "lru_cache")):
        op = opportunity(model_of(request(key_sequence_spans("m.f", [1] * 10, cpu=cost))), "m.f", lookup_ns=100,
                         min_saved_ns=0)
        assert op.advice.kind == kind, (cost, op.advice.text)


def test_savings_below_the_absolute_floor_are_not_worth_it() -> None:
    # Item 4 of issue 11 replaced the 0.5% share-of-all-CPU threshold (this test used to check
    # it) with the function's own economics: 1 hit of 10 us saves 10 us, below the 1 ms floor,
    # whatever its share; with the floor lowered it is worth it.
    spans = key_sequence_spans("m.small", [1, 1], cpu=10_000)
    spans += key_sequence_spans("m.big", list(range(1, 101)), cpu=10_000_000, first_id=100)
    op = opportunity(model_of(request(spans)), "m.small", lookup_ns=100)
    assert op.share == pytest.approx(10_000 / (20_000 + 100 * 10_000_000))
    assert op.advice.kind == "not_worth_it"
    assert "it would save 10 us CPU at maxsize=1, below the 1 ms floor" in op.advice.text
    op = opportunity(model_of(request(spans)), "m.small", lookup_ns=100, min_saved_ns=10_000)
    assert op.advice.kind == "lru_cache"
    # --min-share stays as an optional extra filter (off by default).
    op = opportunity(model_of(request(spans)), "m.small", lookup_ns=100, min_saved_ns=0, min_share=0.01)
    assert op.advice.kind == "not_worth_it" and "below --min-share 1.00%" in op.advice.text


def test_a_small_share_of_a_big_application_is_never_hidden() -> None:
    # 5 ms saved out of 100 s of CPU (0.005%): the old 0.5% threshold hid it; it saves real time.
    spans = key_sequence_spans("m.helper", [1] * 6, cpu=1_000_000)
    spans += key_sequence_spans("m.big", list(range(1, 101)), cpu=1_000_000_000, first_id=100)
    op = opportunity(model_of(request(spans)), "m.helper", lookup_ns=100)
    assert op.share is not None and op.share < 0.0001
    assert op.savings.cpu == 5_000_000
    assert op.advice.kind == "lru_cache"
    report = cache.analyze(model_of(request(spans)), CacheOptions(lookup_ns=100))
    assert [o.name for o in report.opportunities][0] == "m.helper"  # ranked by savings, recommended first


def test_generators_are_not_cacheable() -> None:
    spans = key_sequence_spans("m.gen", [1, 1, 1], cpu=1_000_000, kind="generator")
    op = opportunity(model_of(request(spans)), "m.gen")
    assert op.advice.kind == "not_cacheable"


def test_min_calls_filters_functions() -> None:
    model = model_of(request(key_sequence_spans("m.f", [1, 1, 1], cpu=1_000_000)))
    assert [op.name for op in cache.analyze(model, CacheOptions(min_calls=3)).opportunities] == ["m.f"]
    assert cache.analyze(model, CacheOptions(min_calls=4)).opportunities == []


def test_processes_have_separate_caches_and_results_sum() -> None:
    # The same key in two processes: one hit in each (not a cross-process hit).
    a = request(key_sequence_spans("m.f", [1, 1], cpu=1_000_000), instance="A", pid=1)
    b = request(key_sequence_spans("m.f", [1, 1], cpu=1_000_000, first_id=50), instance="B", pid=2)
    model = model_of(a, b)
    assert len(model.processes) == 2
    op = opportunity(model, "m.f")
    assert op.calls == 4 and op.hits_unbounded == 2 and op.distinct_keys == 2
    assert [p["process"] for p in op.processes] == ["instance:A", "instance:B"]
    assert [p["hit_ratio"] for p in op.processes] == [0.5, 0.5]


def test_processes_fall_back_to_pid() -> None:
    a = request(key_sequence_spans("m.f", [1]), instance=None, pid=11)
    b = request(key_sequence_spans("m.f", [1], first_id=9), instance=None, pid=12)
    model = model_of(a, b)
    assert sorted(p.pid or 0 for p in model.processes) == [11, 12]


# -- summaries and SHARDS --------------------------------------------------------------------------

def test_summarised_calls_count_and_are_replayed_in_call_order() -> None:
    # g as a span at t=0 (key 1), and 4 calls summarised on root, listed at t=10..40 (1, 2, 1, 2):
    # sequence 1, 1, 2, 1, 2 -> hits 1 at size 1, 3 at size 2.
    root = span("m.root", 100, 0, 100, cpu=1_000, extra=summary(["m.g"], [4], cpu_total=[40], cpu_self=[40]),
                events=[calls_event("m.g", [1, 2, 1, 2], [10, 20, 30, 40])])
    g = span("m.g", 101, 1, 5, args=1, ret=1001, cpu=10, parent=100)
    model = model_of(request([g, root]))
    result = replay(model, "m.g")
    assert (hits_at(result, 1), hits_at(result, 2)) == (1, 3)
    info = next(f for f in model.functions if f.name == "m.g")
    assert info.calls == 5
    assert info.stats[2] == 50  # cpu total: 10 (span) + 40 (summary)


def test_sampled_summaries_use_shards_when_enough_keys_survive() -> None:
    # Keys 1..100 hash below 2**63 (kept at rate 0.5), keys 2**63+1.. above (sampled out).
    low = list(range(1, 101))
    high = [(1 << 63) + k for k in range(1, 101)]
    sequence = low + high + low + high
    spans = [span("m.g", 10 + i, 1000 * i, 1000 * i + 10, args=k, ret=7, cpu=10, parent=1)
             for i, k in enumerate(sequence)]
    # A fifth round (low keys) listed on the root, the sixth (high keys) summarised but not listed.
    start = 1000 * len(sequence)
    event = calls_event("m.g", low, [start + 1000 * i for i in range(100)], rate=0.5, returns=[7] * 100)
    root = span("m.root", 1, 0, 10**9, cpu=1_000, events=[event], extra=summary(["m.g"], [200]))
    model = model_of(request(spans + [root]))
    result = replay(model, "m.g")
    assert (result.estimator, result.sample_rate) == ("shards", 0.5)
    # sampled: 3 rounds of the 100 low keys, distance 100 -> size 200; 600 calls / 300 replayed
    assert result.accesses == 300 and result.count_scale == 2 and result.size_scale == 2
    assert result.steps == [(200, 400.0)]
    assert result.distinct_keys == 200
    # the true full sequence: 6 rounds of 100 keys at distance 200 -> 400 hits at size 200
    full = low + high + low + high + low + high
    assert real_lru_hits(full, 199) == 0 and real_lru_hits(full, 200) == 400
    op = opportunity(model, "m.g")
    assert op.estimated and op.estimator == "shards" and op.recommended_maxsize == 200
    assert op.calls == 600 and op.hit_ratio == pytest.approx(400 / 600)


def test_sampled_summaries_with_few_keys_replay_the_listed_calls() -> None:
    # rate 0.5 but only 3 keys below the threshold: SHARDS would estimate from 3 keys. Instead the
    # 7 calls known one by one are replayed and counts scaled to the 13 calls.
    event = calls_event("m.g", [1, 2, 1, 3, 1, 2], [10, 20, 30, 40, 50, 60], rate=0.5)
    root = span("m.root", 100, 0, 100, cpu=1_000, events=[event],
                extra=summary(["m.g"], [12], cpu_total=[120]))
    g_high = span("m.g", 101, 1, 5, args=1 << 63, ret=1, cpu=10, parent=100)
    model = model_of(request([g_high, root]))
    result = replay(model, "m.g")
    assert (result.estimator, result.accesses, result.size_scale) == ("listed", 7, 1.0)
    assert result.count_scale == pytest.approx(13 / 7)
    # 2**63, then 1 2 1 3 1 2: distances 2, 2, 3
    assert result.steps == [(2, pytest.approx(2 * 13 / 7)), (3, pytest.approx(13 / 7))]
    assert result.distinct_keys == 4
    op = opportunity(model, "m.g")
    assert op.estimated and op.estimator == "listed" and op.calls == 13


def test_summary_rows_without_listing_still_count() -> None:
    root = span("m.root", 100, 0, 100, cpu=1_000, extra=summary(["m.h"], [7], cpu_total=[70]))
    model = model_of(request([root]))
    info = next(f for f in model.functions if f.name == "m.h")
    assert info.calls == 7 and info.stats[2] == 70 and info.stats[3] == 70


def test_listed_call_arrays_of_different_lengths_are_rejected() -> None:
    event = calls_event("m.g", [1, 2], [10, 20])
    event["attributes"] = [a for a in event["attributes"] if a["key"] != "callspan.start_ns"]
    event["attributes"] += kvs({"callspan.start_ns": [10]})
    root = span("m.root", 100, 0, 100, events=[event])
    with pytest.raises(ValueError, match="callspan.start_ns"):
        add_request(Batch(), request([root]))


def test_hexkey_helper_is_16_digits() -> None:
    assert hexkey(1) == "0000000000000001"


# -- the two stack-distance implementations and where the savings are computed --------------------

def _distances_by_definition(keys: list[int]) -> list[int]:
    """Stack distance by its definition: 1 + distinct other keys since the key's last use; 0 = first."""
    out = []
    for i, key in enumerate(keys):
        before = keys[:i]
        if key not in before:
            out.append(0)
            continue
        last = len(before) - 1 - before[::-1].index(key)
        out.append(1 + len(set(keys[last + 1:i]) - {key}))
    return out


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=2**64 - 1) | st.integers(1, 12), max_size=200))
def test_move_to_front_and_fenwick_distances_match_the_definition(keys: list[int]) -> None:
    expected = _distances_by_definition(keys)
    assert cache._fenwick_distances(keys) == expected
    assert cache._mtf_distances(keys, dict.fromkeys(keys)) == expected


@pytest.mark.parametrize("distinct", [255, 256, 257, 300, 2048])
def test_move_to_front_two_byte_codes(distinct: int) -> None:
    # Around the one-byte/two-byte code boundary, with codes whose bytes look alike (0x80 | hi, lo).
    rng = random.Random(distinct)
    keys = [rng.getrandbits(64) for _ in range(distinct)]
    sequence = keys + [keys[int(distinct * rng.random() ** 2)] for _ in range(3000)] + keys[::-1]
    assert cache._mtf_distances(sequence, dict.fromkeys(sequence)) == cache._fenwick_distances(sequence)


def test_move_to_front_refuses_more_keys_than_codes() -> None:
    keys = list(range(cache.MTF_CODES + 1))
    with pytest.raises(ValueError):
        cache._mtf_distances(keys, dict.fromkeys(keys))


def _result_fields(result: cache.ProcessResult) -> tuple[Any, ...]:
    return tuple(getattr(result, name) for name in result.__slots__)


@pytest.mark.parametrize("keys", [planted_zipf(3), planted_cyclic_scan(300, 4), list(range(1, 400)) * 3],
                         ids=["zipf", "cyclic-300", "distinct-399"])
def test_analyze_calls_gives_the_same_result_either_way(keys: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    model = model_of(request(key_sequence_spans("m.f", keys)))
    by_mtf = replay(model, "m.f")
    monkeypatch.setattr(cache, "MTF_MAX_KEYS", 0)  # every function through the Fenwick tree
    by_fenwick = replay(model, "m.f")
    assert _result_fields(by_mtf) == _result_fields(by_fenwick)
    assert sum(d * h for d, h in by_mtf.hits_by_distance) == sum(_distances_by_definition(keys))


def _reference_replay(info: FunctionInfo, columns: CallColumns, identity: bool) -> tuple[Any, ...]:
    """The replay as one loop over the calls (the implementation before the per-call work moved
    into C): (histogram, distinct keys, inconsistent keys, collisions, overlapping, {index: distance})."""
    order = sorted(range(len(columns)), key=columns.start.__getitem__)
    keys, rets, flags = columns.args, columns.ret, columns.flags
    identity_flags = F_IDENTITY | (F_SUMMARY if identity else 0)
    track_overlap = info.kind in ("coroutine", "async_generator")
    hist = [0] * (len(order) + 2)
    stack: list[int] = []
    returned: dict[int, int] = {}
    inconsistent: set[int] = set()
    collisions: set[int] = set()
    max_end: dict[int, int] = {}
    overlapping = 0
    distances = {}
    for index in order:
        if flags[index] & (F_ERROR | F_NO_ARGS):
            continue
        key, ret = keys[index], rets[index]
        if ret:
            seen = returned.get(key)
            if seen is None:
                returned[key] = ret
            elif seen != ret and key not in inconsistent and key not in collisions:
                (collisions if flags[index] & identity_flags else inconsistent).add(key)
        if key not in stack:
            stack.append(key)
            if track_overlap:
                max_end[key] = columns.end[index]
            continue
        d = len(stack) - stack.index(key)
        stack.remove(key)
        stack.append(key)
        hist[d] += 1
        distances[index] = d
        if track_overlap:
            if columns.start[index] < max_end[key]:
                overlapping += 1
            max_end[key] = max(max_end[key], columns.end[index])
    return hist, len(stack), inconsistent, collisions, overlapping, distances


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.integers(0, 25), st.sampled_from([0, 1, 2]),
                          st.sampled_from([0, F_ERROR, F_NO_ARGS, F_IDENTITY, F_SUMMARY, F_UNHASHABLE]),
                          st.integers(1, 6)), max_size=120),
       st.sampled_from(["function", "coroutine"]), st.booleans(), st.sampled_from([2048, 0]))
def test_replay_matches_the_one_loop_reference(calls: list[tuple[int, int, int, int, int]], kind: str,
                                               identity: bool, mtf_max_keys: int) -> None:
    columns = CallColumns()
    for key, start, ret, flag, duration in calls:
        columns.start.append(start)
        columns.end.append(start + duration)
        columns.args.append(0 if flag == F_NO_ARGS else key + 2**63)  # keys beyond one byte
        columns.ret.append(ret)
        columns.cpu.append(duration)
        columns.thread.append(1)
        columns.flags.append(flag)
    info = FunctionInfo(0, "m.f", kind=kind)
    info.stats[S_CALLS] = len(calls)
    old = cache.MTF_MAX_KEYS
    cache.MTF_MAX_KEYS = mtf_max_keys  # 0: through the Fenwick tree
    try:
        result = analyze_calls(0, info, columns, identity)
    finally:
        cache.MTF_MAX_KEYS = old
    hist, distinct, inconsistent, collisions, overlapping, distances = _reference_replay(info, columns, identity)
    steps = [(d, float(h)) for d, h in enumerate(hist) if h]
    assert (result.steps, result.distinct_keys, result.inconsistent_keys, result.identity_collisions,
            result.overlapping) == (steps, distinct, len(inconsistent), len(collisions), overlapping)
    assert result.hits_by_distance == sorted(Counter(distances.values()).items())
    assert result.accesses == len(calls)


def _reference_savings(columns: CallColumns, size: int, nested_exclusion: bool) -> tuple[float, float, float]:
    """savings_at as one loop over the calls in start order, at one size (the implementation
    before savings were summed per stack distance in the replay)."""
    info = FunctionInfo(0, "m.f", kind="function")
    distances = _reference_replay(info, columns, False)[5]
    open_until: dict[int, int] = {}
    hits = cpu = wall = 0
    for index in sorted(range(len(columns)), key=columns.start.__getitem__):
        d = distances.get(index, 0)
        if not d or d > size:
            continue
        hits += 1
        if nested_exclusion:
            thread = columns.thread[index]
            if columns.start[index] < open_until.get(thread, 0):
                continue
            open_until[thread] = columns.end[index]
        cpu += columns.cpu[index]
        wall += columns.end[index] - columns.start[index]
    return cpu, wall, hits


def nested_calls(events: list[tuple[int, bool, int, int]]) -> list[tuple[int, int, int, int, int]]:
    """(key, start, end, thread, cpu) of properly nested calls per thread, from (thread, open?,
    key, cpu) events on one clock: how synchronous calls on one thread look."""
    clock = 0
    open_calls: dict[int, list[tuple[int, int, int]]] = {}
    out = []
    for thread, opening, key, cpu in events:
        clock += 1
        stack = open_calls.setdefault(thread, [])
        if opening or not stack:
            stack.append((key, clock, cpu))
        else:
            k, start, c = stack.pop()
            out.append((k, start, clock, thread, c))
    for thread, stack in open_calls.items():
        while stack:
            clock += 1
            k, start, c = stack.pop()
            out.append((k, start, clock, thread, c))
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([1, 1, 1, 2]), st.booleans(), st.integers(1, 8), st.integers(0, 9)),
                min_size=1, max_size=120),
       st.integers(0, 9), st.sampled_from(["function", "coroutine"]))
def test_savings_match_the_one_loop_reference(events: list[tuple[int, bool, int, int]], size: int,
                                              kind: str) -> None:
    columns = CallColumns()
    for key, start, end, thread, cpu in nested_calls(events):
        columns.start.append(start)
        columns.end.append(end)
        columns.args.append(key)
        columns.ret.append(key + 100)
        columns.cpu.append(cpu)
        columns.thread.append(thread)
        columns.flags.append(0)
    result = analyze_calls(0, FunctionInfo(0, "m.f", kind=kind), columns)
    saved = cache.savings_at(result, size)
    assert (saved.cpu, saved.wall, saved.hits) == _reference_savings(columns, size, kind == "function")


def test_nested_hits_on_one_thread_are_counted_once() -> None:
    # f(1) [0, 10); then f(1) [20, 100), which calls f(1) [30, 40). One thread.
    columns = CallColumns()
    for start, end in ((0, 10), (20, 100), (30, 40)):
        for name, value in (("start", start), ("end", end), ("args", 1), ("ret", 2), ("cpu", end - start),
                            ("thread", 1), ("flags", 0)):
            getattr(columns, name).append(value)
    result = analyze_calls(0, FunctionInfo(0, "m.f", kind="function"), columns)
    # two hits; the inner one's cost is part of the outer one's
    saved = cache.savings_at(result, 1)
    assert (saved.hits, saved.cpu, saved.wall) == (2, 80, 80)
    # a coroutine's calls are not nested in one another's cost
    result = analyze_calls(0, FunctionInfo(0, "m.f", kind="coroutine"), columns)
    saved = cache.savings_at(result, 1)
    assert (saved.hits, saved.cpu, saved.wall) == (2, 90, 90)


def test_a_mutable_return_is_ranked_with_a_caveat_and_no_paste_line() -> None:
    extra = {"callspan.return.hashable": False}
    spans = key_sequence_spans("m.rows", [1, 2, 1, 2, 1, 2], cpu=1_000_000, extra=extra)
    op = opportunity(model_of(request(spans)), "m.rows", lookup_ns=100)
    assert op.returns_unhashable
    assert op.advice.kind == "mutable_return" and op.advice.paste is None
    assert "a caller that changes it changes what later callers get" in op.advice.text
    assert op.recommended_maxsize == 2 and op.savings.cpu == 4 * 1_000_000  # ranked by what it would save
    plain = opportunity(model_of(request(key_sequence_spans("m.rows", [1, 2, 1, 2, 1, 2], cpu=1_000_000))), "m.rows",
                        lookup_ns=100)
    assert plain.advice.kind == "lru_cache" and plain.advice.paste is not None
