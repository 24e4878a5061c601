"""Schema v2: ``callspan.profile`` spans are read, merged per process and id, and every report
takes its totals from them (spans are then only examples)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from callspan.analysis import cache, cpu, latency, readers
from callspan.analysis.loader import LoadOptions, load_files
from callspan.analysis.model import Model
from callspan.analysis.otlp import any_value
from callspan.analysis.profile import bucket_value
from tests.analysis import otlp_fixtures
from tests.analysis.otlp_fixtures import (
    SKETCH_GAMMA,
    jaeger_tag,
    key_sequence_spans,
    load_options,
    model_of,
    profile_span,
    request,
    request_v2,
    span,
    write,
)


@pytest.fixture(autouse=True, params=otlp_fixtures.SPILL_MODES)
def spilling(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    return otlp_fixtures.spill_modes(request, monkeypatch)


# -- the encoded process ------------------------------------------------------------------------

FUNCTIONS = {  # id -> (name, line, kind)
    1: ("app.main", 1, "function"), 2: ("app.work", 10, "function"), 3: ("app.price", 20, "function"),
    4: ("app.fetch", 30, "coroutine"), 5: ("app.now", 40, "function"), 6: ("app.handler", 50, "function"),
    7: ("app.load", 60, "function"),
}
TREE = {  # node id -> (parent, function, label)
    1: (0, 0, "MainThread"), 2: (1, 1, ""), 3: (2, 2, ""), 4: (3, 3, ""), 5: (3, 0, "(other)"), 6: (2, 6, ""),
    7: (6, 5, ""), 8: (2, 4, ""), 9: (2, 7, ""), 10: (0, 0, "worker"), 11: (10, 1, ""), 12: (11, 3, ""),
}
# Window 0 in two chunks (nodes 1-6, 7-12), window 1 with the nodes whose counters changed.
WINDOW_NODES = [[[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12]], [[2, 3, 4, 8, 9, 12]]]
NODE_COUNTERS = ("calls", "errors", "wall_ns", "run_ns", "suspended_ns", "awaits", "cpu_total", "cpu_self")


def node_delta(node: int, window: int) -> dict[str, int]:
    """Counters of a node in a window (thread roots have none)."""
    _, function, _ = TREE[node]
    if not function and TREE[node][2] != "(other)":
        return dict.fromkeys(NODE_COUNTERS, 0)
    calls = 10 * node + 3 * window + 1
    cpu_self = 1_000_000 * node + 1000 * window
    run = 4 * cpu_self
    coroutine = function and FUNCTIONS[function][2] == "coroutine"
    suspended = 2 * run if coroutine else 0
    return {"calls": calls, "errors": 1 if node == 4 and window == 0 else 0, "wall_ns": run + suspended,
            "run_ns": run, "suspended_ns": suspended, "awaits": 2 * calls if coroutine else 0,
            "cpu_total": 3 * cpu_self, "cpu_self": cpu_self}


def function_delta(function: int, nodes: list[int], window: int) -> dict[str, int]:
    deltas = [node_delta(n, window) for n in nodes if TREE[n][1] == function]
    return {k: sum(d[k] for d in deltas) for k in ("calls", "errors", "wall_ns", "run_ns", "cpu_self")}


def wall_values(function: int, window: int, calls: int) -> list[int]:
    """Known wall times (ns) of a function's calls in a window: the sketch encodes these."""
    base = 1000 * function + 100 * window
    return [base + (i * 7919 % 997) * (function + 1) for i in range(calls)]


def bucket(value: int) -> int:
    return 0 if value <= 1 else math.ceil(math.log(value) / math.log(SKETCH_GAMMA))


CACHE: dict[int, list[dict[str, Any]]] = {  # window -> cache rows (doubles scaled by the tracer already)
    0: [{"function": 3, "calls": 60, "keys": 5.0, "sampled_calls": 60},
        {"function": 4, "calls": 40, "keys": 3.0, "overlaps": 7.0, "sampled_calls": 40},
        {"function": 5, "calls": 70, "keys": 2.0, "inconsistent_keys": 2.0, "inconsistent_calls": 30.0,
         "sampled_calls": 70},
        {"function": 6, "calls": 60, "keys": 2.0, "sampled_calls": 60},
        {"function": 7, "calls": 90, "keys": 4.0, "unhashable_calls": 90, "unhashable_types": "list,dict",
         "sampled_calls": 90}],
    1: [{"function": 3, "calls": 50, "keys": 1.0, "sampled_calls": 50},
        {"function": 4, "calls": 10, "overlaps": 2.0, "sampled_calls": 10},
        {"function": 5, "calls": 10, "inconsistent_keys": 1.0, "inconsistent_calls": 10.0, "sampled_calls": 10},
        {"function": 7, "calls": 20, "unhashable_calls": 20, "unhashable_types": "list,dict,set",
         "sampled_calls": 20}],
}
REUSE = {  # window -> (function, distance, hits, cpu, wall)
    0: [(3, 0, 20, 40e6, 60e6), (3, 1, 10, 20e6, 30e6), (3, 4, 5, 10e6, 15e6), (4, 0, 30, 90e6, 300e6),
        (5, 0, 60, 60e6, 60e6), (6, 1, 50, 80e6, 90e6), (7, 2, 80, 70e6, 80e6)],
    1: [(3, 0, 5, 10e6, 15e6), (3, 9, 3, 6e6, 9e6), (3, 200, 2, 4e6, 6e6), (4, 0, 8, 24e6, 80e6),
        (5, 0, 9, 9e6, 9e6), (7, 2, 15, 10e6, 12e6)],
}


def profile_spans() -> list[dict[str, Any]]:
    out = []
    for window, chunks in enumerate(WINDOW_NODES):
        for chunk, nodes in enumerate(chunks):
            functions = sorted({TREE[n][1] for n in nodes if TREE[n][1]})
            sketch: list[tuple[int, int, int]] = []
            for f in functions:
                counts: dict[int, int] = {}
                for value in wall_values(f, window * 10 + chunk, function_delta(f, nodes, window)["calls"]):
                    counts[bucket(value)] = counts.get(bucket(value), 0) + 1
                sketch.extend((f, b, n) for b, n in sorted(counts.items()))
            first_chunk = chunk == 0
            out.append(profile_span(
                window, chunk, len(chunks),
                functions=[{"id": f, "name": FUNCTIONS[f][0], "file": "/app/app.py", "line": FUNCTIONS[f][1],
                            "kind": FUNCTIONS[f][2], **function_delta(f, nodes, window)} for f in functions],
                nodes=[{"id": n, "parent": TREE[n][0], "function": TREE[n][1], "label": TREE[n][2],
                        **node_delta(n, window)} for n in nodes],
                wall=sketch, run=[(f, b - 1, n) for f, b, n in sketch],
                cache=CACHE[window] if first_chunk else [], reuse=REUSE[window] if first_chunk else [],
                start=window * 10_000_000_000, end=(window + 1) * 10_000_000_000, final=window == 1))
    return out


def all_values(function: int) -> list[int]:
    values = []
    for window, chunks in enumerate(WINDOW_NODES):
        for chunk, nodes in enumerate(chunks):
            values.extend(wall_values(function, window * 10 + chunk, function_delta(function, nodes, window)["calls"]))
    return sorted(values)


def merged_nodes() -> dict[int, dict[str, int]]:
    out: dict[int, dict[str, int]] = {}
    for window, chunks in enumerate(WINDOW_NODES):
        for nodes in chunks:
            for n in nodes:
                totals = out.setdefault(n, dict.fromkeys(NODE_COUNTERS, 0))
                for k, v in node_delta(n, window).items():
                    totals[k] += v
    return out


def merged_reuse(function: int) -> dict[int, list[float]]:
    out: dict[int, list[float]] = {}
    for rows in REUSE.values():
        for f, d, h, c, w in rows:
            if f == function:
                row = out.setdefault(d, [0.0, 0.0, 0.0])
                row[0] += h
                row[1] += c
                row[2] += w
    return out


def merged_cache(function: int, name: str) -> float:
    return sum(row.get(name, 0) for rows in CACHE.values() for row in rows if row["function"] == function)


def node_path(node: int) -> list[str]:
    path: list[str] = []
    while node:
        parent, function, label = TREE[node]
        if function:
            path.append(FUNCTIONS[function][0])
        elif label == "(other)":
            path.append("(other)")
        node = parent
    return path[::-1]


def requests(extra_spans: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Each profile span in its own request (line), the function spans in the first."""
    spans = profile_spans()
    return [request_v2([*(extra_spans or []), spans[0]]), *(request_v2([s]) for s in spans[1:])]


def the_model(extra_spans: list[dict[str, Any]] | None = None) -> Model:
    return model_of(*requests(extra_spans))


# -- reading ------------------------------------------------------------------------------------

def test_windows_and_chunks_merge_per_process_and_id() -> None:
    examples = key_sequence_spans("app.price", [1, 2, 1], file="/app/app.py", line=20)
    model = the_model(examples)
    assert list(model.profiles) == [0]
    data = model.profiles[0]
    expected = merged_nodes()
    assert set(data.nodes) == set(TREE)
    for nid, node in data.nodes.items():
        assert (node.parent, node.function, node.label) == TREE[nid]
        assert {k: getattr(node, k) for k in NODE_COUNTERS} == expected[nid]
    for fid, (name, line, kind) in FUNCTIONS.items():
        info = data.functions[fid]
        assert (info.name, info.file, info.line, info.kind) == (name, "/app/app.py", line, kind)
        assert info.calls == sum(v["calls"] for n, v in expected.items() if TREE[n][1] == fid)
        assert sum(data.wall_sketch[fid].values()) == info.calls
    assert data.cache[7].unhashable_types == dict.fromkeys(["list", "dict", "set"])
    assert data.cache[5].inconsistent_keys == merged_cache(5, "inconsistent_keys")
    assert data.reuse[3] == merged_reuse(3)
    assert data.chunks == {0: (2, {0, 1}), 1: (1, {0})}
    assert model.input_warnings() == []
    # A profile span is not a call: only the example spans count as spans.
    assert model.spans == len(examples)
    assert data.spans == len(profile_spans())
    assert model.processes[0].schema == 2
    names = {f.name for f in model.functions}
    assert names == {name for name, _, _ in FUNCTIONS.values()}


def test_a_missing_chunk_and_a_repeated_one_are_warnings() -> None:
    spans = profile_spans()
    model = model_of(request_v2([spans[0]]), request_v2([spans[0]]), request_v2([spans[2]]))
    warnings = model.input_warnings()
    assert len(warnings) == 2
    assert "1 callspan.profile chunk(s) missing" in warnings[0]
    assert "read more than once" in warnings[1]


def counted_window(window: int, calls: int, calls_total: int | None, *, final: bool = False, chunk: int = 0,
                   chunks: int = 1) -> dict[str, Any]:
    """A window of one function, ``calls`` calls of it, ending at second ``window + 1``."""
    return profile_span(window, chunk, chunks, functions=[{"id": 1, "name": "app.f", "calls": calls}],
                        start=window * 1_000_000_000, end=(window + 1) * 1_000_000_000, final=final,
                        calls_total=calls_total)


def test_missing_windows_are_numbered_and_their_calls_counted_from_calls_total() -> None:
    # Windows 0..5 of one process (calls 3, 4, 5, 6, 7, 8; running totals 3, 7, 12, 18, 25, 33);
    # windows 2 and 4 never arrived (e.g. the collector was down), the final one did.
    totals = [3, 7, 12, 18, 25, 33]
    spans = [counted_window(w, totals[w] - (totals[w - 1] if w else 0), totals[w], final=w == 5)
             for w in (0, 1, 3, 5)]
    model = model_of(*(request_v2([s]) for s in spans))
    coverage = model.profiles[0].coverage()
    assert coverage.as_json() == {"received": 4, "last": 5, "final": True, "missing": 2, "missing_windows": [2, 4],
                                  "missing_calls": 5 + 7, "end_ns": 6_000_000_000}
    assert model.profiles[0].functions[1].calls == 3 + 4 + 6 + 8  # the windows read
    assert model.input_warnings() == [
        "svc pid 100: 2 callspan.profile window(s) missing from the input (window 2, 4 of 0-5): aggregate "
        "totals are incomplete",
        "svc pid 100: 12 call(s) the tracer folded are in none of the callspan.profile spans read (missing "
        "windows or chunks)"]


def test_a_missing_chunk_counts_its_calls_and_old_tracers_say_no_total() -> None:
    spans = [counted_window(0, 10, 10), counted_window(1, 4, 20, chunk=0, chunks=2, final=True)]  # chunk 1: 6 calls
    model = model_of(*(request_v2([s]) for s in spans))
    assert model.profiles[0].coverage().missing_calls == 6
    assert model.profiles[0].coverage().missing == 0
    older = model_of(*(request_v2([counted_window(w, 5, None, final=w == 2)]) for w in (0, 2)))
    coverage = older.profiles[0].coverage()
    assert (coverage.missing_windows, coverage.missing_calls) == ([1], None)


def test_processes_without_a_final_window_are_named_once() -> None:
    """A worker killed mid-load exports no final window: what it folded after its last window is
    not in the input, and the analyzer says so for it (and not for the workers that stopped)."""
    killed = [request_v2([counted_window(w, 2, 2 * (w + 1))], pid=7, instance="killed") for w in (0, 1, 2)]
    stopped = [request_v2([counted_window(w, 1, w + 1, final=w == 1)], pid=8, instance="stopped") for w in (0, 1)]
    model = model_of(*killed, *stopped)
    assert model.input_warnings() == [
        "1 process(es) without a final callspan.profile window (still running, or ended without exporting it, "
        "e.g. killed): what each folded after its last window is not in the input: svc pid 7 after window 2, "
        "1970-01-01 00:00:03 UTC"]
    by_pid = {p.pid: model.profiles[i].coverage() for i, p in enumerate(model.processes)}
    assert (by_pid[7].final, by_pid[7].last, by_pid[7].missing, by_pid[7].missing_calls) == (False, 2, 0, 0)
    assert (by_pid[8].final, by_pid[8].last) == (True, 1)


def test_lines_with_profile_spans_bypass_the_compiled_reader(tmp_path: Path) -> None:
    path = write(str(tmp_path / "v2.jsonl"), requests(key_sequence_spans("app.price", [1, 2], file="/app/app.py")))
    model = load_files([path], load_options(jobs=1))
    python = Model()
    for r in requests(key_sequence_spans("app.price", [1, 2], file="/app/app.py")):
        batch = python.new_batch()
        readers.add_document(batch, r, "test")
        python.merge(batch)
    assert model.profiles[0] == python.profiles[0]
    assert model.spans == python.spans == 2
    if readers.SCAN_REQUEST is not None:  # the compiled reader alone would keep no column
        with open(path, "rb") as f:
            first = f.readline()
        decoded = readers.SCAN_REQUEST(first)
        assert decoded is not None and not readers._scanned(Model().new_batch(), first, lambda: "x")


def test_worker_processes_merge_pickled_profiles(tmp_path: Path) -> None:
    path = write(str(tmp_path / "v2.jsonl"), requests())
    # One task per line: every window and chunk is read in a worker and merged here.
    parallel = load_files([path], LoadOptions(jobs=2, chunk_bytes=1, memory_budget=otlp_fixtures.MEMORY_BUDGET))
    assert parallel.profiles[0] == the_model().profiles[0]


def jaeger_document(requests_: list[dict[str, Any]]) -> dict[str, Any]:
    """The Jaeger ``/api/traces`` JSON of OTLP requests (arrays become JSON strings)."""
    traces = []
    for r in requests_:
        resource = r["resourceSpans"][0]
        process_tags = [jaeger_tag(kv["key"], any_value(kv["value"])) for kv in resource["resource"]["attributes"]]
        for s in resource["scopeSpans"][0]["spans"]:
            tags = [jaeger_tag("otel.scope.name", "callspan")]
            tags.extend(jaeger_tag(kv["key"], any_value(kv["value"])) for kv in s["attributes"])
            start = int(s["startTimeUnixNano"]) // 1000
            traces.append({"traceID": s["traceId"], "spans": [{
                "traceID": s["traceId"], "spanID": s["spanId"], "operationName": s["name"], "references": [],
                "startTime": start, "duration": int(s["endTimeUnixNano"]) // 1000 - start, "tags": tags,
                "logs": [], "processID": "p1"}], "processes": {"p1": {"serviceName": "svc", "tags": process_tags}}})
    return {"data": traces}


def test_jaeger_input_gives_the_same_aggregates(tmp_path: Path) -> None:
    path = tmp_path / "jaeger.json"
    path.write_text(json.dumps(jaeger_document(requests())))
    model = load_files([str(path)], load_options(jobs=1))
    assert len(model.profiles) == 1
    mine, expected = next(iter(model.profiles.values())), the_model().profiles[0]
    assert mine.nodes == expected.nodes
    assert mine.functions == expected.functions
    assert mine.cache == expected.cache
    assert mine.reuse == expected.reuse
    assert mine.wall_sketch == expected.wall_sketch


# -- CPU ----------------------------------------------------------------------------------------

def expected_stacks(with_cpu: bool = True) -> dict[tuple[str, ...], tuple[int, int, int]]:
    nodes = merged_nodes()
    out: dict[tuple[str, ...], tuple[int, int, int]] = {}
    for nid, totals in nodes.items():
        path = tuple(node_path(nid))
        if not path:
            continue
        if with_cpu:
            self_cost, total = totals["cpu_self"], totals["cpu_total"]
        else:
            children = sum(nodes[c]["run_ns"] for c, (p, _, _) in TREE.items() if p == nid)
            self_cost, total = max(0, totals["run_ns"] - children), totals["run_ns"]
        old = out.get(path, (0, 0, 0))
        out[path] = (old[0] + self_cost, old[1] + total, old[2] + totals["calls"])
    return out


def test_cpu_stacks_are_the_call_tree_paths() -> None:
    examples = key_sequence_spans("app.price", [1, 2, 1], cpu=123_456_789, file="/app/app.py")
    report = cpu.resolve(the_model(examples))
    got = {tuple(report.table.path(st.stack)): (st.self_cost, st.total_cost, st.calls) for st in report.stacks}
    expected = expected_stacks()
    assert got == expected
    assert ("app.main",) in got and ("app.main", "app.work", "(other)") in got  # two threads, one path
    assert report.basis == "cpu" and report.unit == "ns"
    assert report.total_self == sum(v["cpu_self"] for v in merged_nodes().values())
    assert report.aggregate_processes == 1
    folded = cpu.folded(report).splitlines()
    assert sorted(folded) == sorted(f"{';'.join(p)} {v[0]}" for p, v in expected.items() if v[0] > 0)


def test_without_cpu_the_stacks_use_running_time() -> None:
    spans = profile_spans()
    for s in spans:
        for kv in s["attributes"]:
            if kv["key"] in ("callspan.profile.node.cpu_total", "callspan.profile.node.cpu_self",
                             "callspan.profile.function.cpu_self"):
                kv["value"] = otlp_fixtures.av([0] * len(kv["value"]["arrayValue"]["values"]))
    report = cpu.resolve(model_of(*(request_v2([s], unit="none") for s in spans)))
    assert report.basis == "wall"
    got = {tuple(report.table.path(st.stack)): (st.self_cost, st.total_cost, st.calls) for st in report.stacks}
    assert got == expected_stacks(with_cpu=False)


def test_v1_and_v2_processes_add_up_by_path() -> None:
    v1 = request([span("app.main", 1, 0, 100, cpu=5000)], instance="old-process", pid=200)
    spans = profile_spans()
    model = model_of(v1, *(request_v2([s]) for s in spans))
    report = cpu.resolve(model)
    got = {tuple(report.table.path(st.stack)): (st.self_cost, st.calls) for st in report.stacks}
    main = expected_stacks()[("app.main",)]
    assert got[("app.main",)] == (main[0] + 5000, main[2] + 1)


# -- latency ------------------------------------------------------------------------------------

def exact_percentile(values: list[int], p: float) -> int:
    return latency.percentile(sorted(values), p)


def test_latency_from_sketches_and_exact_totals() -> None:
    examples = key_sequence_spans("app.price", [1, 2, 1], file="/app/app.py", line=20, step=10**9)
    report = latency.analyze(the_model(examples), None)
    rows = {row.name: row for row in report.functions}
    nodes = merged_nodes()
    for fid, (name, _, kind) in FUNCTIONS.items():
        row = rows[name]
        mine = [v for n, v in nodes.items() if TREE[n][1] == fid]
        values = all_values(fid)
        assert row.source == "aggregates"
        assert row.calls == sum(v["calls"] for v in mine) == len(values)
        assert row.errors == sum(v["errors"] for v in mine)
        assert row.timed_calls == len(values)
        for p, got in ((50, row.p50), (95, row.p95), (99, row.p99)):
            exact = exact_percentile(values, p)
            assert abs(got - exact) <= 0.01 * exact, (name, p, got, exact)
        assert row.total_wall == sum(v["wall_ns"] for v in mine)
        # The distribution: every call once, in the bin of its sketch bucket's value (within 1%).
        binned: dict[int, int] = {}
        for value in values:
            index = latency.bin_of(bucket_value(bucket(value), SKETCH_GAMMA))
            binned[index] = binned.get(index, 0) + 1
        assert row.distribution == binned and sum(binned.values()) == row.calls
        assert len(binned) >= 2
        assert row.mean_running == pytest.approx(sum(v["run_ns"] for v in mine) / row.calls)
        if kind == "coroutine":
            assert row.mean_suspended == pytest.approx(sum(v["suspended_ns"] for v in mine) / row.calls)
            assert row.awaits_per_call == pytest.approx(sum(v["awaits"] for v in mine) / row.calls)
        else:
            assert row.mean_suspended is None
    # The example spans are longer than any aggregated call: the longest one is the max.
    assert rows["app.price"].max == 10**9 // 2


def test_sketch_bucket_values_are_within_one_percent() -> None:
    for value in (2, 3, 17, 1000, 123_456, 10**9 + 7):
        assert abs(bucket_value(bucket(value), SKETCH_GAMMA) - value) <= 0.01 * value


# -- cache --------------------------------------------------------------------------------------

def hits_below(function: int, size: int) -> float:
    return sum(row[0] for d, row in merged_reuse(function).items() if d < size)


def test_cache_hits_at_every_size_come_from_the_reuse_histogram() -> None:
    model = the_model()
    data = model.profiles[0]
    index = model.function_index[(0, "app.price")]
    result = cache.aggregate_result(index, model.functions[index], data, [3], identity=False, has_cpu=True)
    for size in (1, 2, 3, 5, 6, 10, 11, 128, 201, 10**6):
        assert result.hits_at(size) == hits_below(3, size), size
    assert result.hits_unbounded == hits_below(3, 10**9)
    assert result.distinct_keys == merged_cache(3, "keys")
    assert result.estimator == "exact" and result.source == "aggregates"

    report = cache.analyze(model)
    op = next(o for o in report.opportunities if o.name == "app.price")
    calls = data.functions[3].calls
    assert op.calls == calls
    assert op.hits_unbounded == hits_below(3, 10**9)
    assert op.hit_ratio_at_128 == pytest.approx(hits_below(3, 128) / calls)
    # Recommended: the smallest size reaching 95% of all hits, and what it saves.
    sizes = sorted(d + 1 for d in merged_reuse(3))
    goal = 0.95 * hits_below(3, 10**9)
    size = next(s for s in sizes if hits_below(3, s) >= goal)
    assert op.recommended_maxsize == size
    assert op.savings.cpu == sum(row[1] for d, row in merged_reuse(3).items() if d < size)
    # The fixture's reuse rows say the hits took 129 ms of wall, more than the function's own
    # total wall in its function table: savings never exceed the function's own cost (issue 11,
    # item 1), so the figure is clamped to it, and the clamp is counted (never silent).
    saved_wall = sum(row[2] for d, row in merged_reuse(3).items() if d < size)
    own_wall = data.functions[3].wall_ns
    assert own_wall < saved_wall
    assert op.savings.wall == own_wall
    assert report.clamps.counts["wall_savings_le_cost"] >= 1  # the fixture's other functions too
    assert any(m.startswith("app.price: wall saved") for m in report.clamps.messages)
    assert op.fresh_keys == 0 and op.consistent
    assert op.source == "aggregates" and not op.estimated
    # The share is of the process's traced CPU: the sum of the nodes' self CPU.
    assert report.total_cpu == {"ns": sum(v["cpu_self"] for v in merged_nodes().values())}
    assert op.advice.kind == "lru_cache" and op.advice.paste == f"@functools.lru_cache(maxsize={size})  # /app/app.py:20"


def test_cache_advice_from_aggregates() -> None:
    ops = {op.name: op for op in cache.analyze(the_model()).opportunities}
    now = ops["app.now"]
    assert now.advice.kind == "inconsistent" and merged_cache(5, "inconsistent_keys") == 3
    # handler's own returns are consistent, but the call tree says it calls app.now.
    # It stays ranked with its savings, under a caveat naming the callee and its inconsistent share.
    handler = ops["app.handler"]
    assert handler.advice.kind == "calls_impure" and handler.advice.paste is None
    assert handler.impure_callees == ["app.now"]
    assert handler.impure_keys == [(now.inconsistent_keys, now.distinct_keys)]
    # The fixture's windows claim 3 inconsistent keys of 2: clamped (hits <= calls, keys <= calls and
    # inconsistent keys <= keys are enforced and counted).
    assert now.inconsistent_keys == now.distinct_keys == 2
    assert "which returned different values for 2 of 2 argument keys (100.0%)" in handler.advice.text
    assert handler.savings.cpu > 0 and handler.recommended_maxsize is not None
    # main calls app.now too (through handler) but has no keys: it is not analyzed at all.
    assert "app.main" not in ops
    load = ops["app.load"]
    assert load.advice.kind == "lru_cache_convert_args" and load.unhashable_types == ["dict", "list", "set"]
    fetch = ops["app.fetch"]
    assert fetch.advice.kind == "inflight_coalescing"
    assert fetch.overlapping == merged_cache(4, "overlaps")


def test_a_function_folded_beyond_the_call_tree_cap_has_unknown_callees() -> None:
    # app.deep's every call was folded into an "(other)" node: no node of its own, so what it calls is
    # unknown; app.top, with a node, is recommended as usual. Both repeat 9 of 10 keys, 1 ms a call.
    functions = [{"id": 1, "name": "app.top", "file": "/app/app.py", "line": 1, "calls": 10, "wall_ns": 10**7,
                  "cpu_self": 10**6},
                 {"id": 2, "name": "app.deep", "file": "/app/app.py", "line": 9, "calls": 10, "wall_ns": 10**7,
                  "cpu_self": 10**7}]
    nodes = [{"id": 1, "parent": 0, "function": 0, "label": "MainThread"},
             {"id": 2, "parent": 1, "function": 1, "calls": 10, "cpu_total": 2 * 10**7, "cpu_self": 10**6},
             {"id": 3, "parent": 2, "function": 0, "label": "(other)", "calls": 10, "cpu_total": 10**7,
              "cpu_self": 10**7}]
    cache_rows = [{"function": f, "calls": 10, "keys": 1.0, "sampled_calls": 10} for f in (1, 2)]
    reuse = [(1, 0, 9.0, 9 * 2e6, 9 * 2e6), (2, 0, 9.0, 9e6, 9e6)]
    model = model_of(request_v2([profile_span(0, functions=functions, nodes=nodes, cache=cache_rows, reuse=reuse,
                                              final=True)]))
    ops = {op.name: op for op in cache.analyze(model, cache.CacheOptions(lookup_ns=100)).opportunities}
    assert ops["app.top"].advice.kind == "lru_cache"
    deep = ops["app.deep"]
    assert deep.advice.kind == "callees_unknown" and cache.tier(deep.advice.kind) == "caveated"
    assert deep.advice.paste is None and deep.recommended_maxsize == 1 and deep.savings.cpu == 9e6
    assert deep.advice.text == ('what it calls is not known (the tracer folded all its calls into "(other)" '
                                "call-tree nodes, beyond CALLSPAN_MAX_NODES or CALLSPAN_MAX_DEPTH, and lost "
                                "caller-callee pairs beyond its table of CALLSPAN_MAX_NODES pairs, or kept none: an "
                                "older tracer), so it may call functions with side effects that caching it would "
                                "skip; if it does not: cache it with functools.lru_cache(maxsize=1)")


def test_caller_callee_pairs_beyond_the_call_tree_cap_make_callees_known() -> None:
    # As above (app.deep folded under app.top's node), and app.deep calls app.clock (folded too),
    # which returned different values for its one key. The tracer kept both pairs (lost_edges 0):
    # app.deep and app.top call impure code; with pairs lost, app.deep's callees are unknown again.
    functions = [{"id": 1, "name": "app.top", "file": "/app/app.py", "line": 1, "calls": 10, "wall_ns": 10**7,
                  "cpu_self": 10**6},
                 {"id": 2, "name": "app.deep", "file": "/app/app.py", "line": 9, "calls": 10, "wall_ns": 10**7,
                  "cpu_self": 10**7},
                 {"id": 3, "name": "app.clock", "file": "/app/app.py", "line": 20, "calls": 10, "wall_ns": 10**6}]
    nodes = [{"id": 1, "parent": 0, "function": 0, "label": "MainThread"},
             {"id": 2, "parent": 1, "function": 1, "calls": 10, "cpu_total": 2 * 10**7, "cpu_self": 10**6},
             {"id": 3, "parent": 2, "function": 0, "label": "(other)", "calls": 20, "cpu_total": 10**7,
              "cpu_self": 10**7}]
    cache_rows = [{"function": f, "calls": 10, "keys": 1.0, "sampled_calls": 10} for f in (1, 2)]
    cache_rows.append({"function": 3, "calls": 10, "keys": 1.0, "inconsistent_keys": 1.0, "sampled_calls": 10})
    reuse = [(1, 0, 9.0, 9 * 2e6, 9 * 2e6), (2, 0, 9.0, 9e6, 9e6), (3, 0, 9.0, 9e5, 9e5)]

    def ops_with(**edges: Any) -> dict[str, cache.Opportunity]:
        model = model_of(request_v2([profile_span(0, functions=functions, nodes=nodes, cache=cache_rows, reuse=reuse,
                                                  final=True, **edges)]))
        return {op.name: op for op in cache.analyze(model, cache.CacheOptions(lookup_ns=100)).opportunities}

    ops = ops_with(edges=[(1, 2, 10), (2, 3, 10)], lost_edges=0)
    for name, path in (("app.deep", ["app.deep", "app.clock"]), ("app.top", ["app.top", "app.deep", "app.clock"])):
        op = ops[name]
        assert op.advice.kind == "calls_impure" and op.impure_callees == ["app.clock"], name
        assert op.advice.text.startswith("calls impure app.clock" + (" (via app.deep)" if len(path) > 2 else ""))
    assert ops["app.clock"].advice.kind == "inconsistent"
    # Some pair lost (the tracer's table was full): what app.deep calls may be missing.
    ops = ops_with(edges=[(1, 2, 10)], lost_edges=10)
    assert ops["app.deep"].advice.kind == "callees_unknown"
    assert ops["app.top"].advice.kind == "lru_cache"


def test_a_function_returning_none_on_every_call_is_caveated() -> None:
    # app.sort_rows returned None on all 10 calls (sorting its argument in place, say); app.maybe
    # on 9 of 10 (one call returned a value); app.raising on the 8 calls that returned, 2 raised.
    functions = [{"id": f, "name": name, "file": "/app/app.py", "line": f, "calls": 10, "errors": errors,
                  "wall_ns": 10**7, "cpu_self": 10**7} for f, name, errors in
                 ((1, "app.sort_rows", 0), (2, "app.maybe", 0), (3, "app.raising", 2))]
    nodes = [{"id": 1, "parent": 0, "function": 0, "label": "MainThread"}]
    nodes += [{"id": 1 + f, "parent": 1, "function": f, "calls": 10, "cpu_total": 10**7, "cpu_self": 10**7}
              for f in (1, 2, 3)]
    cache_rows = [{"function": f, "calls": 10, "keys": 1.0, "sampled_calls": 10, "none_returns": nones,
                   "unhashable_calls": 10 if f == 1 else 0, "unhashable_types": "rows:list" if f == 1 else ""}
                  for f, nones in ((1, 10), (2, 9), (3, 8))]
    reuse = [(f, 0, 9.0, 9e6, 9e6) for f in (1, 2, 3)]
    model = model_of(request_v2([profile_span(0, functions=functions, nodes=nodes, cache=cache_rows, reuse=reuse,
                                              final=True)]))
    ops = {op.name: op for op in cache.analyze(model, cache.CacheOptions(lookup_ns=100)).opportunities}
    assert ops["app.maybe"].advice.kind == "lru_cache"
    for name in ("app.sort_rows", "app.raising"):
        op = ops[name]
        assert op.advice.kind == "returns_none" and cache.tier(op.advice.kind) == "caveated", name
        assert op.advice.paste is None and op.advice.text.startswith("returned None on every call: it is called "
                                                                     "for what it does")
    # Its unhashable argument is named too: never a bare lru_cache.
    assert "convert rows (list) to a tuple" in ops["app.sort_rows"].advice.text


def test_a_new_object_each_call_is_not_cacheable_as_is_and_not_impurity() -> None:
    spans = profile_spans()
    for profile in spans:
        for kv in profile["attributes"]:
            if kv["key"] == "callspan.profile.cache.function":
                functions = [int(v["intValue"]) for v in kv["value"]["arrayValue"]["values"]]
        for kv in profile["attributes"]:
            if kv["key"] == "callspan.profile.cache.fresh_keys":  # app.price and app.load: new objects
                kv["value"] = otlp_fixtures.av([1.0 if f in (3, 7) else 0.0 for f in functions])
    ops = {o.name: o for o in cache.analyze(model_of(*(request_v2([s]) for s in spans))).opportunities}
    price = ops["app.price"]
    assert price.advice.kind == "fresh_object" and price.consistent and price.inconsistent_keys == 0
    assert price.recommended_maxsize is None and price.advice.paste is None
    assert "returns a new object each call" in price.advice.text
    assert ops["app.load"].advice.kind == "fresh_object"
    # Not evidence of a side effect: nothing calling them is flagged impure for it.
    assert all(op.impure_callees in ([], ["app.now"]) for op in ops.values())


def test_identity_calls_make_differing_returns_collisions() -> None:
    spans = profile_spans()
    for kv in spans[0]["attributes"]:
        if kv["key"] == "callspan.profile.cache.identity_calls":
            kv["value"] = otlp_fixtures.av([0, 0, 5, 0, 0])  # app.now's self hashes by identity
    op = next(o for o in cache.analyze(model_of(*(request_v2([s]) for s in spans))).opportunities
              if o.name == "app.now")
    assert op.identity and op.inconsistent_keys == 0
    assert op.identity_collisions == merged_cache(5, "inconsistent_keys")
    assert op.advice.kind == "method"


def sampled_process(rates: tuple[float, float]) -> list[dict[str, Any]]:
    function = [{"id": 1, "name": "app.lookup", "file": "/app/lookup.py", "line": 3, "calls": 5000,
                 "wall_ns": 5000 * 40_000, "run_ns": 5000 * 40_000, "cpu_self": 5000 * 30_000}]
    node: list[dict[str, Any]] = [{"id": 1, "label": "MainThread"}, {"id": 2, "parent": 1, "function": 1, "calls": 5000,
                                               "wall_ns": 5000 * 40_000, "run_ns": 5000 * 40_000,
                                               "cpu_total": 5000 * 30_000, "cpu_self": 5000 * 30_000}]
    out = []
    for window, rate in enumerate(rates):
        out.append(request_v2([profile_span(
            window, functions=function, nodes=node if window == 0 else [],
            cache=[{"function": 1, "calls": 5000, "keys": 2000.0, "sampled_calls": round(5000 * rate), "rate": rate}],
            reuse=[(1, 0, 400 / rate, 400 / rate * 30_000, 400 / rate * 40_000),
                   (1, 3000, 100 / rate, 100 / rate * 30_000, 100 / rate * 40_000)])], instance="inst-2"))
    return out


def test_key_sampled_aggregates_are_estimates() -> None:
    op = cache.analyze(model_of(*sampled_process((0.5, 0.25)))).opportunities[0]
    assert op.estimated and op.estimator == "tracer_shards" and op.sample_rate == 0.25
    assert op.hits_unbounded == 400 / 0.5 + 100 / 0.5 + 400 / 0.25 + 100 / 0.25
    exact = cache.analyze(model_of(*sampled_process((1.0, 1.0)))).opportunities[0]
    assert not exact.estimated and exact.estimator == "exact"


# -- spans are a sample -------------------------------------------------------------------------

def test_totals_come_from_the_aggregates_when_spans_are_a_sample() -> None:
    million = 1_000_000
    profile = profile_span(
        0, functions=[{"id": 1, "name": "app.hot", "file": "/app/hot.py", "line": 7, "calls": million,
                       "wall_ns": million * 2000, "run_ns": million * 2000, "cpu_self": million * 1500}],
        nodes=[{"id": 1, "label": "MainThread"},
               {"id": 2, "parent": 1, "function": 1, "calls": million, "wall_ns": million * 2000,
                "run_ns": million * 2000, "cpu_total": million * 1500, "cpu_self": million * 1500}],
        wall=[(1, bucket(2000), million)],
        cache=[{"function": 1, "calls": million, "keys": 10.0, "sampled_calls": million}],
        reuse=[(1, 3, million - 10, (million - 10) * 1500.0, (million - 10) * 2000.0)])
    examples = key_sequence_spans("app.hot", [1, 2, 3, 4, 5, 1, 2, 3, 4, 5], cpu=1500, file="/app/hot.py", line=7)
    model = model_of(request_v2([*examples, profile]))
    assert model.spans == 10
    rows = latency.analyze(model, None).functions
    assert [(r.name, r.calls, r.timed_calls) for r in rows] == [("app.hot", million, million)]
    assert rows[0].p50 == round(bucket_value(bucket(2000), SKETCH_GAMMA))
    stacks = cpu.resolve(model)
    assert [(stacks.table.path(s.stack), s.calls, s.self_cost) for s in stacks.stacks] == [
        (["app.hot"], million, million * 1500)]
    op = cache.analyze(model).opportunities[0]
    assert (op.calls, op.hits_unbounded, op.distinct_keys) == (million, million - 10, 10)


# -- the CLI ------------------------------------------------------------------------------------

def test_cli_json_reports_aggregates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from callspan.analysis.__main__ import main

    examples = key_sequence_spans("app.price", [1, 2, 1], file="/app/app.py", line=20)
    path = write(str(tmp_path / "v2.jsonl"), requests(examples))
    memory = ["--memory-mb", "1", "--spill-dir", str(tmp_path)] if otlp_fixtures.MEMORY_BUDGET else []
    assert main([path, "--report", "all", "--format", "json", "--no-progress", "--top", "50", *memory]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["input"]["schema_versions"] == [2]
    assert doc["input"]["profile_spans"] == len(profile_spans())
    assert doc["input"]["spans"] == len(examples)
    assert doc["input"]["processes"][0]["aggregates"] is True
    stacks = {tuple(s["stack"]): (s["self"], s["total"], s["calls"]) for s in doc["cpu"]["stacks"]}
    assert stacks == expected_stacks()
    rows = {r["function"]: r for r in doc["latency"]["functions"]}
    assert rows["app.price"]["source"] == "aggregates"
    assert rows["app.price"]["calls"] == len(all_values(3))
    ops = {o["function"]: o for o in doc["cache"]["opportunities"]}
    assert ops["app.price"]["hits"] == hits_below(3, 10**9)
    assert ops["app.price"]["source"] == "aggregates" and ops["app.price"]["estimated"] is False
    assert ops["app.handler"]["advice"]["kind"] == "calls_impure"
    assert os.listdir(tmp_path) == ["v2.jsonl"]  # spill files (if any) are gone


@pytest.fixture
def no_profiles_v1() -> Iterator[Model]:
    yield model_of(request(key_sequence_spans("app.price", [1, 2, 1])))


def test_v1_input_has_no_aggregates(no_profiles_v1: Model) -> None:
    assert no_profiles_v1.profiles == {}
    assert cpu.resolve(no_profiles_v1).aggregate_processes == 0
    assert all(row.source == "spans" for row in latency.analyze(no_profiles_v1, None).functions)
    assert all(op.source == "spans" for op in cache.analyze(no_profiles_v1).opportunities)
