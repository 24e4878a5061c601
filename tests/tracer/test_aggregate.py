"""The aggregates every call is folded into (schema v2): exact counts per function and per full
logical stack, windows that add up, latency sketches within their stated error, and cache state
equal to functools.lru_cache at every size below the key cap."""

from __future__ import annotations

import asyncio
import functools
import itertools
import math
import os
import random
import threading
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callspan.tracer.aggregate import ALPHA, GAMMA, Aggregates, mix64, sampled, sketch_bucket

# -- reading windows back (what an analyzer does) ----------------------------------------------


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def merged(windows: list[dict[str, list[Any]]]) -> tuple[dict[int, str], dict[int, dict[str, Any]]]:
    """Function names by id, and nodes by id with their counters summed over windows."""
    functions: dict[int, str] = {}
    nodes: dict[int, dict[str, Any]] = {}
    for window in windows:
        functions.update(zip(window["function.id"], window["function.name"], strict=True))
        for i, node_id in enumerate(window["node.id"]):
            node = nodes.setdefault(node_id, {"parent": window["node.parent"][i],
                                              "function": window["node.function"][i],
                                              "label": window["node.label"][i]})
            for column in ("calls", "errors", "wall_ns", "run_ns", "suspended_ns", "awaits", "cpu_total", "cpu_self"):
                node[column] = node.get(column, 0) + window[f"node.{column}"][i]
    return functions, nodes


def calls_by_function(windows: list[dict[str, list[Any]]]) -> dict[str, int]:
    totals: Counter[str] = Counter()
    for window in windows:
        for name, calls in zip(window["function.name"], window["function.calls"], strict=True):
            totals[_short(name)] += calls
    return {name: count for name, count in totals.items() if count}


def stacks(windows: list[dict[str, list[Any]]], column: str = "calls") -> dict[tuple[str, ...], int]:
    """Calls (or another counter) per full stack, thread roots left out."""
    functions, nodes = merged(windows)
    out: dict[tuple[str, ...], int] = {}
    for node_id, node in nodes.items():
        if node["parent"] == 0:
            continue
        path: list[str] = []
        current: int = node_id
        while nodes[current]["parent"] != 0:
            item = nodes[current]
            path.append(_short(functions[item["function"]]) if item["function"] else item["label"])
            current = item["parent"]
        if node[column]:
            out[tuple(reversed(path))] = out.get(tuple(reversed(path)), 0) + node[column]
    return out


def hits_at(windows: list[dict[str, list[Any]]], function: str, size: int | None) -> float:
    functions: dict[int, str] = {}
    for window in windows:
        functions.update(zip(window["function.id"], window["function.name"], strict=True))
    total = 0.0
    for window in windows:
        for fid, distance, hits in zip(window["reuse.function"], window["reuse.distance"], window["reuse.hits"],
                                       strict=True):
            if _short(functions[fid]) == function and (size is None or distance < size):
                total += hits
    return total


def cache_column(windows: list[dict[str, list[Any]]], function: str, column: str) -> float:
    functions: dict[int, str] = {}
    total = 0.0
    for window in windows:
        functions.update(zip(window["function.id"], window["function.name"], strict=True))
        for i, fid in enumerate(window["cache.function"]):
            if _short(functions[fid]) == function:
                total += window[f"cache.{column}"][i]
    return total


# -- traced workloads ----------------------------------------------------------------------------


def leaf(i: int) -> int:
    return i % 7


def mid(n: int) -> int:
    total = 0
    for i in range(n):
        total += leaf(i)
    return total


def side() -> int:
    return 1


async def gathered(i: int) -> int:
    await asyncio.sleep(0)
    return leaf(i)


async def grouped(i: int) -> int:
    await asyncio.sleep(0)
    return side() + i


async def spawned() -> int:
    return side()


async def coordinator() -> None:
    await asyncio.gather(*(gathered(i) for i in range(4)))
    async with asyncio.TaskGroup() as group:
        for i in range(3):
            group.create_task(grouped(i))
    await asyncio.create_task(spawned())


def in_thread() -> None:
    mid(3)


def fib(n: int) -> int:
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def program(recursion: bool = True) -> None:
    for _ in range(20):
        mid(10)
    for _ in range(30):
        side()
    asyncio.run(coordinator())
    worker = threading.Thread(target=in_thread, name="worker")
    worker.start()
    worker.join()
    if recursion:
        fib(8)


def test_exact_counts_per_function_and_per_full_logical_stack(traced) -> None:  # type: ignore[no-untyped-def]
    run = traced(max_spans_per_trace=5)
    run.run(program)
    windows = run.sink.windows
    assert run.sink.finals == [True]
    per_stack = stacks(windows)
    assert per_stack[("program", "mid")] == 20
    assert per_stack[("program", "mid", "leaf")] == 200
    assert per_stack[("program", "side")] == 30
    # Gathered and grouped coroutines and tasks sit under the coroutine that created them.
    assert per_stack[("program", "coordinator", "gathered")] == 4
    assert per_stack[("program", "coordinator", "gathered", "leaf")] == 4
    assert per_stack[("program", "coordinator", "grouped")] == 3
    assert per_stack[("program", "coordinator", "grouped", "side")] == 3
    assert per_stack[("program", "coordinator", "spawned", "side")] == 1
    # Another thread: its own root.
    assert per_stack[("in_thread", "mid", "leaf")] == 3
    # Direct recursion folds into one node; its calls are all counted.
    assert per_stack[("program", "fib")] == fib_calls(8)
    assert calls_by_function(windows)["leaf"] == 207
    functions, nodes = merged(windows)
    roots = {node["label"] for node in nodes.values() if node["parent"] == 0}
    assert {"MainThread", "worker"} <= roots


def fib_calls(n: int) -> int:
    return 1 if n < 2 else 1 + fib_calls(n - 1) + fib_calls(n - 2)


def test_cpu_self_adds_up_to_the_total_and_recursion_is_not_counted_twice(traced) -> None:  # type: ignore[no-untyped-def]
    run = traced()
    run.run(fib, 10)
    functions, nodes = merged(run.sink.windows)
    (fib_node,) = [n for n in nodes.values() if n["function"] and _short(functions[n["function"]]) == "fib"]
    (span,) = [n for n in run.sink.closed if n.parent is None]
    # Inclusive totals count the outermost call only; self CPU counts every call.
    assert fib_node["cpu_total"] == span.attributes["callspan.cpu.total"]
    assert fib_node["wall_ns"] == span.end_ns - span.start_ns
    assert fib_node["cpu_self"] == sum(n.attributes["callspan.cpu.self"] for n in run.sink.closed)


def test_windows_add_up_to_one_export(traced) -> None:  # type: ignore[no-untyped-def]
    whole = traced(exclude=("tests.conftest",))
    whole.run(program)
    split = traced(exclude=("tests.conftest",))
    split.session.start()
    try:
        for _ in range(20):
            mid(10)
        split.session.export_profile()
        for _ in range(30):
            side()
        split.session.export_profile()
        asyncio.run(coordinator())
        worker = threading.Thread(target=in_thread, name="worker")
        worker.start()
        worker.join()
        fib(8)
    finally:
        split.session.stop()
    split_windows = split.sink.windows
    assert len(split_windows) == 3 and [w["window"] for w in split_windows] == [[0], [1], [2]]
    # Each window says the running count of calls exported so far (a reader counts a lost window's calls).
    running = list(itertools.accumulate(sum(w["function.calls"]) for w in split_windows))
    assert [w["calls_total"] for w in split_windows] == [[n] for n in running]
    whole_calls = calls_by_function(whole.sink.windows)
    assert running[0] == 20 * 11 and running[-1] == sum(whole_calls.values()) - whole_calls["program"]
    # Stacks are counted from inside program() in one run and from the test in the other.
    expected = {path[1:]: count for path, count in stacks(whole.sink.windows).items()
                if path[0] == "program" and path[1:]}
    expected.update({path: count for path, count in stacks(whole.sink.windows).items() if path[0] != "program"})
    assert stacks(split_windows) == expected


def test_errors_and_awaits_are_counted(traced) -> None:  # type: ignore[no-untyped-def]
    def fails(i: int) -> int:
        if i % 2:
            raise ValueError(i)
        return i

    def calls_fails() -> None:
        for i in range(6):
            try:
                fails(i)
            except ValueError:
                pass

    run = traced()
    run.run(calls_fails)
    functions, nodes = merged(run.sink.windows)
    (node,) = [n for n in nodes.values() if n["function"] and _short(functions[n["function"]]) == "fails"]
    assert (node["calls"], node["errors"]) == (6, 3)

    run = traced()
    run.run(asyncio.run, coordinator())
    functions, nodes = merged(run.sink.windows)
    (node,) = [n for n in nodes.values() if n["function"] and _short(functions[n["function"]]) == "gathered"]
    assert node["awaits"] == 4 and node["suspended_ns"] > 0 and node["run_ns"] + node["suspended_ns"] == node["wall_ns"]


def test_node_cap_folds_new_paths_into_other_with_exact_totals(traced) -> None:  # type: ignore[no-untyped-def]
    run = traced(max_nodes=4)
    run.run(program)
    windows = run.sink.windows
    functions, nodes = merged(windows)
    assert len([n for n in nodes.values() if n["parent"] and n["label"] != "(other)"]) <= 4
    assert any(n["label"] == "(other)" for n in nodes.values())
    # Every call is still counted, per node and per function.
    total_calls = sum(n["calls"] for n in nodes.values())
    assert total_calls == sum(calls_by_function(windows).values())
    assert calls_by_function(windows)["leaf"] == 207
    assert run.session.recorder.aggregates.other_calls == sum(
        n["calls"] for n in nodes.values() if n["label"] == "(other)")
    assert sum(w["other_nodes"][0] for w in windows) == run.session.recorder.aggregates.other_calls


def pair_calls(windows: list[dict[str, list[Any]]]) -> tuple[Counter[tuple[str, str]], Counter[tuple[str, str]]]:
    """Calls per (caller, callee) function pair: from the call tree (a node under its parent's
    node; without recursion, its calls) and from the edge rows (calls folded into (other)
    nodes), each summed over windows."""
    functions, nodes = merged(windows)
    in_tree: Counter[tuple[str, str]] = Counter()
    for node in nodes.values():
        parent = nodes.get(node["parent"])
        if node["function"] and parent is not None and parent["function"] and parent["function"] != node["function"]:
            in_tree[_short(functions[parent["function"]]), _short(functions[node["function"]])] += node["calls"]
    folded: Counter[tuple[str, str]] = Counter()
    for window in windows:
        for caller, callee, calls in zip(window["edge.caller"], window["edge.callee"], window["edge.calls"],
                                         strict=True):
            folded[_short(functions[caller]), _short(functions[callee])] += calls
    return in_tree, folded


def test_calls_folded_beyond_the_caps_keep_their_caller_callee_pairs(traced) -> None:  # type: ignore[no-untyped-def]
    run = traced()
    run.run(program, False)  # a recursive function's node counts its nested calls too
    in_tree, folded = pair_calls(run.sink.windows)
    assert not folded and in_tree[("mid", "leaf")] == 203 and in_tree[("program", "side")] == 30
    # Depth 2 (thread root, program, mid): leaf's and every deeper call fold into (other) nodes;
    # the tree and the pairs together still give every pair's calls, exactly.
    capped = traced(max_depth=2)
    capped.run(program, False)
    tree_part, folded = pair_calls(capped.sink.windows)
    assert folded[("mid", "leaf")] == 203 and folded[("coordinator", "gathered")] == 4
    assert tree_part + folded == in_tree
    assert sum(w["lost_edges"][0] for w in capped.sink.windows) == 0
    # At most max_nodes pairs: the calls of pairs first seen beyond that are counted as lost.
    small = traced(max_nodes=4)
    small.run(program, False)
    tree_part, folded = pair_calls(small.sink.windows)
    assert len(folded) == 4
    assert all(tree_part[pair] + folded[pair] == in_tree[pair] for pair in folded)
    lost = sum(w["lost_edges"][0] for w in small.sink.windows)
    assert lost == sum((in_tree - tree_part - folded).values()) > 0
    assert lost == small.session.recorder.aggregates.lost_edges


def test_depth_cap_folds_deeper_calls(traced) -> None:  # type: ignore[no-untyped-def]
    def a(n: int) -> int:
        return b(n - 1) if n else 0

    def b(n: int) -> int:
        return a(n - 1) if n else 0

    run = traced(max_depth=5)
    run.run(a, 40)
    functions, nodes = merged(run.sink.windows)
    others = [n for n in nodes.values() if n["label"] == "(other)"]
    assert len(others) == 1
    assert len(nodes) == 1 + 5 + 1  # thread root, five levels, one (other)
    assert calls_by_function(run.sink.windows) == {"a": 21, "b": 20}
    assert sum(n["calls"] for n in nodes.values()) == 41


# -- latency sketches --------------------------------------------------------------------------


def sketch_quantile(counts: dict[int, int], q: float) -> float:
    total = sum(counts.values())
    rank = max(1, math.ceil(q * total))
    seen = 0
    for bucket in sorted(counts):
        seen += counts[bucket]
        if seen >= rank:
            return 0.0 if bucket == 0 else 2 * GAMMA ** bucket / (GAMMA + 1)
    raise AssertionError("rank beyond the count")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=2, max_value=10**12), min_size=1, max_size=300),
       st.sampled_from([0.5, 0.9, 0.95, 0.99, 1.0]))
def test_sketch_percentiles_are_within_the_stated_relative_error(values: list[int], q: float) -> None:
    counts = Counter(sketch_bucket(v) for v in values)
    exact = sorted(values)[max(1, math.ceil(q * len(values))) - 1]
    assert abs(sketch_quantile(counts, q) - exact) <= ALPHA * exact + 1e-6 * exact


def test_sketches_cover_every_call(traced) -> None:  # type: ignore[no-untyped-def]
    run = traced()
    run.run(program)
    functions: dict[int, str] = {}
    wall: Counter[str] = Counter()
    run_counts: Counter[str] = Counter()
    for window in run.sink.windows:
        functions.update(zip(window["function.id"], window["function.name"], strict=True))
        for fid, count in zip(window["wall.function"], window["wall.count"], strict=True):
            wall[_short(functions[fid])] += count
        for fid, count in zip(window["run.function"], window["run.count"], strict=True):
            run_counts[_short(functions[fid])] += count
    assert dict(wall) == calls_by_function(run.sink.windows)
    # Running time only where it can differ from wall time: coroutines (and generators).
    assert dict(run_counts) == {name: wall[name] for name in ("coordinator", "gathered", "grouped", "spawned", "<genexpr>")}


# -- cache state -----------------------------------------------------------------------------


def keyed(k: int) -> int:
    return k * 2


def replay(sequence: list[int]) -> None:
    for k in sequence:
        keyed(k)


def lru_hits(sequence: list[int], size: int | None) -> int:
    cached = functools.lru_cache(maxsize=size)(keyed)
    for k in sequence:
        cached(k)
    return cached.cache_info().hits


@settings(max_examples=15, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=40), min_size=1, max_size=400))
def test_cache_hits_equal_lru_cache_at_every_size(sequence: list[int]) -> None:
    from tests.conftest import Traced

    run = Traced("sysmon" if hasattr(__import__("sys"), "monitoring") else "setprofile")
    run.run(replay, sequence)
    windows = run.sink.windows
    for size in [*range(1, len(set(sequence)) + 2), None]:
        assert hits_at(windows, "keyed", size) == lru_hits(sequence, size), size
    assert cache_column(windows, "keyed", "keys") == len(set(sequence))
    assert cache_column(windows, "keyed", "inconsistent_keys") == 0
    assert cache_column(windows, "keyed", "calls") == len(sequence)


def test_cache_hits_equal_lru_cache_on_every_core(traced) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(7)
    sequence = [rng.randrange(60) for _ in range(3000)]
    run = traced()
    run.run(replay, sequence)
    for size in (1, 2, 5, 17, 30, 59, 60, None):
        assert hits_at(run.sink.windows, "keyed", size) == lru_hits(sequence, size)


_impure_state = [0]


def impure(k: int) -> int:
    _impure_state[0] += 1  # hidden state: key 3 returns a different value each call
    return k + (_impure_state[0] if k == 3 else 0)


class Fresh:
    pass


def fresh(k: int) -> Fresh:
    return Fresh()


def purity_program() -> None:
    for _ in range(3):
        for k in range(5):
            impure(k)
            fresh(k)
    for k in [[1], [1], [2]]:
        listed(k)
    for k in (1, 1, 2, 3):
        rows(k)
    for k in ([3, 1], [3, 1], [2]):
        sort_in_place(k)
    for k in (1, 1, 2):
        maybe_none(k)


def sort_in_place(values: list[int]) -> None:  # called for its effect: returns None
    values.sort()


def maybe_none(k: int) -> int | None:
    return None if k == 1 else k


def listed(items: list[int]) -> int:
    return len(items)


def rows(n: int) -> list[int]:  # a mutable return: callers would share one cached list
    return list(range(n))


def test_consistency_fresh_objects_and_unhashable_arguments(traced) -> None:  # type: ignore[no-untyped-def]
    run = traced()
    run.run(purity_program)
    windows = run.sink.windows
    # impure(3) returned three different values: one inconsistent key, all its 3 calls.
    assert cache_column(windows, "impure", "inconsistent_keys") == 1
    assert cache_column(windows, "impure", "inconsistent_calls") == 3
    # A new object each call is not a different value: counted apart.
    assert cache_column(windows, "fresh", "inconsistent_keys") == 0
    assert cache_column(windows, "fresh", "fresh_keys") == 5
    # Lists are fingerprinted: keyed, replayed, and flagged unhashable.
    assert cache_column(windows, "listed", "unhashable_calls") == 3
    # Returns hash() refused are counted (the analyzer's mutable_return); hashable ones are not.
    assert cache_column(windows, "rows", "unhashable_returns") == 4
    assert cache_column(windows, "rows", "inconsistent_keys") == 0  # equal lists: fingerprinted alike
    assert cache_column(windows, "listed", "unhashable_returns") == 0
    # Returns of None are counted (the analyzer's returns_none when every call returned None).
    assert cache_column(windows, "sort_in_place", "none_returns") == 3
    assert cache_column(windows, "maybe_none", "none_returns") == 2
    assert cache_column(windows, "listed", "none_returns") == 0
    assert hits_at(windows, "listed", None) == 1
    types = [t for w in windows for fid, t in zip(w["cache.function"], w["cache.unhashable_types"], strict=True) if t]
    assert sorted(types) == ["items:list", "values:list"]  # the argument named, then its type


async def fetch(k: int) -> int:
    await asyncio.sleep(0)
    return k


async def fetch_all() -> None:
    await asyncio.gather(*(fetch(k % 2) for k in range(6)))


def test_overlapping_calls_with_the_same_key_are_counted(traced) -> None:  # type: ignore[no-untyped-def]
    run = traced()
    run.run(asyncio.run, fetch_all())
    # Six fetches start before any finishes: two keys, four calls that overlapped a key in flight.
    assert cache_column(run.sink.windows, "fetch", "overlaps") == 4


def test_beyond_the_key_cap_keys_are_sampled_and_estimates_scaled(traced) -> None:  # type: ignore[no-untyped-def]
    run = traced(max_keys=64)
    sequence = list(range(1000)) * 3
    run.run(replay, sequence)
    windows = run.sink.windows
    (rate,) = [r for w in windows for fid, r in zip(w["cache.function"], w["cache.rate"], strict=True)
               if r < 1.0]
    assert rate < 64 / 1000 * 2
    state = run.session.recorder.aggregates
    assert run.session.recorder.aggregates.total_keys <= 64 + 8  # keyed + the driver's few keys
    # Every key repeats at distance 999: the estimate is scaled back to about that.
    distances = {d for w in windows for d in w["reuse.distance"]}
    assert all(abs(d - 999) < 999 * 0.5 for d in distances if d > 10)
    estimate = hits_at(windows, "keyed", None)
    assert 2000 * 0.5 < estimate < 2000 * 1.5
    assert state.max_keys == 64


def test_shards_estimates_are_unbiased_over_key_sets() -> None:
    class Info:
        name, file, line, kind = "f", "", 0, 0

    estimates = []
    for offset in range(40):
        aggregates = Aggregates(max_keys=32)
        info = Info()
        keys = [offset * 100_000 + k for k in range(400)]
        for t, k in enumerate(keys * 2):
            aggregates.fold_key(info, (k, "", False), 1, False, t, t + 1, 1)  # type: ignore[arg-type]
        state = aggregates.functions[info].cache  # type: ignore[index]
        assert state is not None and len(state.keys) <= 32
        estimates.append(sum(row[0] for row in state.reuse.values()))
    mean = sum(estimates) / len(estimates)
    assert abs(mean - 400) < 400 * 0.15


class NamedInfo:
    """The CodeInfo fields fold_key reads, for driving the aggregates directly."""

    def __init__(self, name: str) -> None:
        self.name, self.file, self.line, self.kind = name, "", 0, 0


def test_process_wide_key_budget_halves_the_largest_of_equally_cheap_functions() -> None:
    aggregates = Aggregates(max_keys=10_000, max_keys_total=300)
    big, small = NamedInfo("big"), NamedInfo("small")
    for k in range(50):
        aggregates.fold_key(small, (k, "", False), 1, False, k, k + 1, 1)  # type: ignore[arg-type]
    for k in range(1000):
        aggregates.fold_key(big, (k, "", False), 1, False, k, k + 1, 1)  # type: ignore[arg-type]
    assert aggregates.total_keys <= 300
    assert aggregates.functions[small].cache.level == 0  # type: ignore[index,union-attr]
    assert aggregates.functions[big].cache.level > 0  # type: ignore[index,union-attr]


def test_process_wide_key_budget_sheds_the_cheapest_function_first() -> None:
    # Two functions with 200 keys each; a budget of 300 keys. Calls of "costly" take 1,000 ns of
    # the injected clock, those of "cheap" 1 ns: "cheap" is sampled, "costly" stays exact.
    aggregates = Aggregates(max_keys=10_000, max_keys_total=300)
    costly, cheap = NamedInfo("costly"), NamedInfo("cheap")
    t = 0
    for k in range(200):
        aggregates.fold_key(costly, (k, "", False), 1, False, t, t + 1000, 1)  # type: ignore[arg-type]
        aggregates.fold_key(cheap, (k, "", False), 1, False, t, t + 1, 1)  # type: ignore[arg-type]
        t += 2000
    assert aggregates.total_keys <= 300
    costly_state = aggregates.functions[costly].cache  # type: ignore[index]
    cheap_state = aggregates.functions[cheap].cache  # type: ignore[index]
    assert costly_state is not None and cheap_state is not None
    assert costly_state.level == 0 and len(costly_state.keys) == 200
    assert cheap_state.level > 0 and len(cheap_state.keys) <= 100


def test_sampling_is_spatial_and_uses_a_mixed_hash() -> None:
    # Small ints hash to themselves: without mixing, a rate of 1/2 would keep none of 0..1000.
    kept = sum(sampled(mix64(k), 1) for k in range(1000))
    assert 400 < kept < 600
    assert all(sampled(mix64(k), 0) for k in range(100))


# -- fork ----------------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_exports_only_its_own_calls(traced) -> None:  # type: ignore[no-untyped-def]
    import json

    run = traced(exclude=("tests.conftest",))
    session = run.session
    session.start()
    try:
        for _ in range(5):
            mid(4)
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child
            try:
                os.close(read_end)
                for _ in range(2):
                    mid(4)
                columns = session.recorder.aggregates.export_window()
                os.write(write_end, json.dumps(columns).encode())
            finally:
                os._exit(0)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            child = json.loads(pipe.read())
        os.waitpid(pid, 0)
        mid(4)
    finally:
        session.stop()
    assert calls_by_function([child]) == {"mid": 2, "leaf": 8}
    assert stacks([child]) == {("test_a_forked_child_exports_only_its_own_calls", "mid"): 2,
                               ("test_a_forked_child_exports_only_its_own_calls", "mid", "leaf"): 8} or \
        stacks([child]) == {("mid",): 2, ("mid", "leaf"): 8}
    assert child["window"] == [0]
    assert calls_by_function(run.sink.windows) == {"mid": 6, "leaf": 24}


def test_a_longer_run_keeps_the_same_state_size(traced) -> None:  # type: ignore[no-untyped-def]
    def service(requests: int) -> None:
        for i in range(requests):
            mid(i % 13)
            keyed(i % 50)

    sizes = []
    for requests in (300, 900):
        run = traced(max_spans_per_second=5)
        run.run(service, requests)
        aggregates = run.session.recorder.aggregates
        assert calls_by_function(run.sink.windows)["mid"] == requests
        sizes.append((aggregates.total_keys, len(run.sink.windows[0]["node.id"]), len(run.sink.closed)))
    # State per distinct stack and key, spans per trace budget: not per call.
    assert sizes[0] == sizes[1]


def memo_fib(n: int) -> int:
    return n if n < 2 else memo_fib(n - 1) + memo_fib(n - 2)


class CountedValue:
    """A return value whose hash counts how often the tracer takes it."""

    hashes = 0

    def __init__(self, n: int) -> None:
        self.n = n

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CountedValue) and other.n == self.n

    def __hash__(self) -> int:
        CountedValue.hashes += 1
        return hash(self.n)


def counted_fib(n: int) -> CountedValue:
    return CountedValue(n if n < 2 else counted_fib(n - 1).n + counted_fib(n - 2).n)


def test_a_shadowed_calls_return_value_is_not_hashed(traced) -> None:  # type: ignore[no-untyped-def]
    # A shadowed call (inside a call whose key was cached) is counted and nothing more: its
    # return value is not hashed, so only the memoized program's calls hash theirs.
    # No trace keeps spans (a span would show the hash); CountedValue's own methods are traced
    # (this file is) but not keyed (their self would be hashed as an argument).
    run = traced(max_spans_per_second=0, keys_exclude=("*CountedValue*",))
    CountedValue.hashes = 0
    run.run(counted_fib, 12)
    windows = run.sink.windows
    shadowed = cache_column(windows, "counted_fib", "shadowed_calls")
    assert calls_by_function(windows)["counted_fib"] == fib_calls(12)
    assert shadowed > 0
    assert CountedValue.hashes == fib_calls(12) - shadowed


def test_recursive_functions_are_sized_on_the_calls_a_memoized_version_makes(traced) -> None:  # type: ignore[no-untyped-def]
    run = traced()
    run.run(memo_fib, 16)
    windows = run.sink.windows

    @functools.cache
    def twin(n: int) -> int:  # the memoized version: the same body calling its cached self
        return n if n < 2 else twin(n - 1) + twin(n - 2)

    twin(16)
    info = twin.cache_info()
    total_calls = fib_calls(16)
    assert calls_by_function(windows)["memo_fib"] == total_calls  # every call still counted
    shadowed = cache_column(windows, "memo_fib", "shadowed_calls")
    assert cache_column(windows, "memo_fib", "calls") == total_calls
    # What is left is the memoized program's sequence of lookups: its misses and hits.
    assert total_calls - shadowed == info.hits + info.misses
    assert hits_at(windows, "memo_fib", None) == info.hits
    assert cache_column(windows, "memo_fib", "keys") == info.misses == 17
