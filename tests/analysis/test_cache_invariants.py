"""Issue 11, items 1 and 4: the cache report's invariants hold on any input (enforced by clamping,
counted, never silent), estimates say how they were made, the same input gives the same report,
and functions are judged by their own economics against a measured cache lookup."""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from callspan.analysis import cache
from callspan.analysis.cache import CacheOptions
from callspan.analysis.cli import add_analyze_arguments, analyze, render
from callspan.analysis.report import Results, render_json_object, render_text
from tests.analysis.otlp_fixtures import (
    calls_event,
    key_sequence_spans,
    model_of,
    profile_span,
    request,
    request_v2,
    span,
    summary,
    write,
)

NAMES = ["m.a", "m.b", "m.c", "m.d"]


def report_json(requests: list[dict[str, Any]], **options: Any) -> dict[str, Any]:
    """The JSON report of ``callspan analyze --format json --report cache``, in process."""
    model = model_of(*requests)
    results = Results(model, ["cache"], cache=cache.analyze(model, CacheOptions(**options)))
    doc = render_json_object(results)
    render_text(results)  # the text report renders too
    return json.loads(json.dumps(doc))


def check_invariants(doc: dict[str, Any]) -> None:
    c = doc["cache"]
    assert c["savings_additive"] is False and "not additive" in c["savings_note"]
    assert c["lookup_ns"] > 0
    assert sum(c["invariant_clamps"].values()) >= len(c["warnings"])
    for op in c["opportunities"]:
        what = (op["function"], op)
        assert 0 <= op["hits"] <= op["calls"], what
        assert 0 <= op["distinct_keys"] <= op["calls"], what
        assert 0 <= op["savings"]["hits"] <= op["hits"], what
        for key in ("hit_ratio", "hit_ratio_at_128", "hit_ratio_at_recommended"):
            assert op[key] is None or 0 <= op[key] <= 1, (key, what)
        assert all(0 <= ratio <= 1 for _, ratio in op["curve"]), what
        share = op["savings"]["share"]
        assert share is None or 0 <= share <= 1, what
        # Savings never exceed the function's own total cost (rounding aside).
        if op["savings"]["cpu"] is not None:
            assert op["savings"]["cpu"] <= op["own_cost"]["cpu"] + 1, what
        assert op["savings"]["wall_ns"] <= op["own_cost"]["wall_ns"] + 1, what
        # Every estimated figure says it is estimated, and how.
        assert op["estimated"] == (op["estimator"] != "exact") == (op["estimate"] is not None), what
        if op["estimated"]:
            assert "estimated" in op["estimate"]["text"] and f"{op['sample_rate']:g}" in op["estimate"]["text"]
        for p in op["processes"]:
            assert 0 <= p["distinct_keys"] <= p["calls"], what
            assert 0 <= p["hit_ratio"] <= 1 and 0 <= p["hit_ratio_at_128"] <= 1, what
            assert p["savings"]["hits"] <= p["calls"], what
            assert p["savings"]["cpu"] <= p["own_cost"]["cpu"] + 1, what
            assert p["savings"]["wall_ns"] <= p["own_cost"]["wall_ns"] + 1, what
        if op["advice"]["kind"] == "not_worth_it" and not op["cheap_ns"]:
            # It says why, with the numbers.
            assert re.match(r"not worth it: .*\d+(\.\d+)? (ns|us|ms|s) ", op["advice"]["text"]), what


# -- v1 spans -------------------------------------------------------------------------------------

@st.composite
def v1_requests(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Spans of a few functions (overlapping ones nest: recursion), some returning different
    values for a key, plus a root span summarising calls of m.s, key-sampled at a drawn rate,
    whose per-call CPU and the summary's total are drawn independently (they may disagree)."""
    spans: list[dict[str, Any]] = []
    next_id = 10
    for name in draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=3, unique=True)):
        n = draw(st.integers(1, 25))
        for i in range(n):
            key = draw(st.integers(1, 6))
            start = i * 1000
            end = start + draw(st.integers(1, 3000))
            ret = key + 1000 if draw(st.integers(0, 9)) else key + 2000
            cpu = draw(st.integers(0, 3_000_000))
            spans.append(span(name, next_id, start, end, args=key, ret=ret, cpu=cpu,
                              cpu_self=draw(st.integers(0, cpu)), error=draw(st.integers(0, 19)) == 0,
                              kind=draw(st.sampled_from(["function", "function", "coroutine"])), parent=1))
            next_id += 1
    listed = draw(st.lists(st.integers(1, 80), min_size=0, max_size=40))
    if listed:
        rate = draw(st.sampled_from([1.0, 0.5, 0.25]))
        total = draw(st.integers(0, 10_000_000))
        spans.append(span("m.root", 1, 0, 10**6, cpu=draw(st.integers(0, 10**7)),
                          extra=summary(["m.s"], [len(listed) + draw(st.integers(0, 20))], cpu_total=[total]),
                          events=[calls_event("m.s", listed, list(range(1, len(listed) + 1)), rate=rate,
                                              cpu=draw(st.integers(0, 1_000_000)))]))
    return [request(spans)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(v1_requests())
def test_invariants_hold_on_generated_spans(requests: list[dict[str, Any]]) -> None:
    doc = report_json(requests, lookup_ns=100)
    check_invariants(doc)
    assert report_json(requests, lookup_ns=100) == doc  # the same input, the same report


# -- v2 aggregates ----------------------------------------------------------------------------------

@st.composite
def v2_requests(draw: st.DrawFn) -> list[dict[str, Any]]:
    """A schema 2 process whose aggregates are drawn freely: cache rows and reuse rows may claim
    more hits than calls, more keys than calls, more saved CPU or wall than the function cost."""
    fids = draw(st.lists(st.integers(1, 4), min_size=1, max_size=4, unique=True))
    functions, nodes, cache_rows, reuse = [], [{"id": 1, "parent": 0, "function": 0, "label": "MainThread"}], [], []
    for fid in fids:
        calls = draw(st.integers(2, 200))
        cpu_self = draw(st.integers(0, 10**8))
        functions.append({"id": fid, "name": NAMES[fid - 1], "file": "/app/m.py", "line": fid,
                          "kind": draw(st.sampled_from(["function", "coroutine"])), "calls": calls,
                          "wall_ns": draw(st.integers(0, 10**9)), "run_ns": 0, "cpu_self": cpu_self})
        nodes.append({"id": fid + 1, "parent": 1, "function": fid, "calls": calls,
                      "cpu_total": cpu_self + draw(st.integers(0, 10**8)), "cpu_self": cpu_self})
        rate = draw(st.sampled_from([1.0, 1.0, 0.5, 0.125]))
        cache_rows.append({"function": fid, "calls": calls, "keys": float(draw(st.integers(1, 300))),
                           "inconsistent_keys": float(draw(st.sampled_from([0, 0, 0, 1]))),
                           "sampled_calls": calls, "rate": rate})
        for distance in draw(st.lists(st.integers(0, 300), min_size=1, max_size=5, unique=True)):
            reuse.append((fid, distance, float(draw(st.integers(0, 150))), float(draw(st.integers(0, 10**8))),
                          float(draw(st.integers(0, 10**8)))))
    return [request_v2([profile_span(0, functions=functions, nodes=nodes, cache=cache_rows, reuse=reuse,
                                     final=True)])]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(v2_requests())
def test_invariants_hold_on_generated_aggregates(requests: list[dict[str, Any]]) -> None:
    doc = report_json(requests, lookup_ns=100)
    check_invariants(doc)
    assert report_json(requests, lookup_ns=100) == doc


def test_clamps_are_counted_and_shown() -> None:
    # Aggregates claiming 50 hits of 10 calls, 30 keys of 10 calls, 9 ms saved of 1 ms of CPU.
    requests = [request_v2([profile_span(
        0, functions=[{"id": 1, "name": "m.a", "file": "/app/m.py", "line": 1, "calls": 10, "wall_ns": 10**9,
                       "cpu_self": 10**6}],
        nodes=[{"id": 1, "parent": 0, "function": 0, "label": "MainThread"},
               {"id": 2, "parent": 1, "function": 1, "calls": 10, "cpu_total": 10**6, "cpu_self": 10**6}],
        cache=[{"function": 1, "calls": 10, "keys": 30.0, "sampled_calls": 10}],
        reuse=[(1, 0, 50.0, 9e6, 1e6)], final=True)])]
    doc = report_json(requests, lookup_ns=100)
    check_invariants(doc)
    op = doc["cache"]["opportunities"][0]
    assert (op["hits"], op["distinct_keys"], op["savings"]["cpu"]) == (10, 10, 10**6)
    assert doc["cache"]["invariant_clamps"] == {"cpu_savings_le_cost": 1, "hits_at_size_le_hits": 1,
                                                "hits_le_calls": 1, "keys_le_calls": 1, "share_le_one": 1} \
        or doc["cache"]["invariant_clamps"]["hits_le_calls"] == 1
    assert any("m.a: hits 50 > 10, clamped (hits_le_calls)" == w for w in doc["cache"]["warnings"])
    model = model_of(*requests)
    text = render_text(Results(model, ["cache"], cache=cache.analyze(model, CacheOptions(lookup_ns=100))))
    assert "broke an invariant and were clamped" in text and "hits_le_calls x1" in text


def test_a_summary_whose_listed_calls_cost_more_than_its_total_is_clamped() -> None:
    # 10 listed calls of 1 ms each, but the summary says 2 ms in all: savings stay within 2 ms.
    root = span("m.root", 1, 0, 10**6, cpu=10**7, extra=summary(["m.s"], [10], cpu_total=[2_000_000]),
                events=[calls_event("m.s", [1] * 10, list(range(10, 110, 10)), cpu=1_000_000)])
    doc = report_json([request([root])], lookup_ns=100, min_saved_ns=0)
    check_invariants(doc)
    op = next(o for o in doc["cache"]["opportunities"] if o["function"] == "m.s")
    assert op["savings"]["cpu"] == 2_000_000 == op["own_cost"]["cpu"]
    assert doc["cache"]["invariant_clamps"]["cpu_savings_le_cost"] == 1


def test_estimates_say_how_and_their_error() -> None:
    # 200 keys listed at rate 1/2: SHARDS; the relative error of the distinct keys is given.
    keys = list(range(1, 201)) * 2
    root = span("m.root", 1, 0, 10**6, cpu=10**9, extra=summary(["m.s"], [len(keys)], cpu_total=[10**9]),
                events=[calls_event("m.s", keys, list(range(1, len(keys) + 1)), rate=0.5, cpu=10**6)])
    doc = report_json([request([root])], lookup_ns=100)
    check_invariants(doc)
    op = next(o for o in doc["cache"]["opportunities"] if o["function"] == "m.s")
    assert op["estimated"] and op["estimator"] == "shards"
    error = op["estimate"]["relative_error"]
    assert error == pytest.approx((0.5 / (op["distinct_keys"] * 0.5)) ** 0.5, rel=1e-3)
    assert "rate 0.5" in op["estimate"]["text"] and "relative standard error" in op["estimate"]["text"]


def test_the_text_report_says_savings_overlap_and_gives_no_total() -> None:
    inner = key_sequence_spans("m.inner", [1, 1, 1], cpu=1_000_000, first_id=10, parent=1)
    outer = key_sequence_spans("m.outer", [1, 1, 1], cpu=3_000_000, first_id=20)
    model = model_of(request(inner + outer))
    text = render_text(Results(model, ["cache"], cache=cache.analyze(model, CacheOptions(lookup_ns=100))))
    assert "savings overlap" in " ".join(text.split()) and "not additive" in " ".join(text.split())
    assert "total" not in text.lower().replace("no total is given", "")
    assert "a cache hit is taken to cost 100 ns (option)" in " ".join(text.split())


# -- the lookup cost --------------------------------------------------------------------------------

def test_the_lookup_cost_is_measured_once_cheaply_and_reported() -> None:
    cache.measure_lookup_cost.cache_clear()
    started = time.perf_counter()
    cost = cache.measure_lookup_cost()
    assert time.perf_counter() - started < 0.05
    assert 0 < cost.one_arg_ns < 10_000 and 0 < cost.three_args_ns < 10_000
    assert cost.ns == max(cost.one_arg_ns, cost.three_args_ns) and cost.source == "measured"
    assert cache.measure_lookup_cost() is cost  # once per run (process)
    doc = report_json([request(key_sequence_spans("m.f", [1, 1, 1], cpu=1_000_000))])
    assert doc["cache"]["lookup_ns"] == pytest.approx(cost.ns, abs=0.1)
    assert doc["cache"]["lookup"]["source"] == "measured" and doc["cache"]["lookup"]["iterations"] > 0
    model = model_of(request(key_sequence_spans("m.f", [1, 1, 1], cpu=1_000_000)))
    text = " ".join(render_text(Results(model, ["cache"], cache=cache.analyze(model))).split())
    assert "a functools.lru_cache hit costs ~" in text and "measured here" in text


def test_a_call_must_cost_clearly_more_than_a_lookup() -> None:
    # 1,000 hits of a call costing 1.5 lookups save 150 us... and with a big floor-clearing count
    # still not worth it: the per-call cost decides, whatever the total.
    spans = key_sequence_spans("m.f", [1] * 20_000, cpu=150, step=10)
    doc = report_json([request(spans)], lookup_ns=100)
    op = doc["cache"]["opportunities"][0]
    assert op["savings"]["cpu"] >= 1_000_000
    assert op["advice"]["kind"] == "not_worth_it"
    assert "a call costs ~150 ns CPU, less than 2x a functools.lru_cache hit (100 ns" in op["advice"]["text"]


# -- the same input, the same advice ---------------------------------------------------------------

def test_the_same_input_gives_the_same_report_with_any_number_of_workers(tmp_path: Path) -> None:
    spans: list[dict[str, Any]] = []
    for n, name in enumerate(["m.tie_b", "m.tie_a", "m.other", "m.tie_c"]):
        # m.tie_* save exactly the same: ranked by name.
        keys = [1, 2, 1, 2, 3] * 4 if name.startswith("m.tie") else [5, 5, 6, 6]
        spans += key_sequence_spans(name, keys, first_id=1 + 100 * n, cpu=2_000_000)
    path = write(str(tmp_path / "t.jsonl"), [request(spans[:30]), request(spans[30:])])
    parser = argparse.ArgumentParser()
    add_analyze_arguments(parser)
    docs = [render(analyze(parser.parse_args([path, "--format", "json", "--no-progress", "--jobs", jobs])), "json")
            for jobs in ("1", "2", "1", "2")]
    assert docs[0] == docs[1] == docs[2] == docs[3]
    ops = json.loads(docs[0])["cache"]["opportunities"]
    assert [o["function"] for o in ops] == ["m.tie_a", "m.tie_b", "m.tie_c", "m.other"]
