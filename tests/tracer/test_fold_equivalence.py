"""The compiled hot path folds exactly like its Python reference (differential tests).

The same workload runs under a Python core and under its compiled twin (sysmon / csysmon on
3.12+, setprofile / csetprofile) with the injected TickClock and TickCounter: every window the
aggregates export must be equal (same columns, rows, ids and values), and so must the spans.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from typing import Any

import pytest

from callspan import _env
from tests.conftest import Traced

if os.environ.get("CALLSPAN_REQUIRE_EXTENSION") != "1":
    pytest.importorskip("callspan.tracer._hotpath")

PAIRS = [("setprofile", "csetprofile")]
if _env.HAS_SYS_MONITORING:
    PAIRS.insert(0, ("sysmon", "csysmon"))

SECRET = bytes(range(32))
_current: list[Any] = [None]  # the Traced object of the run in progress


# -- the workload ------------------------------------------------------------------------------


def leaf(x: Any) -> Any:
    return x


def square(x: int) -> int:
    return x * x


def fib(n: int) -> int:
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def ping(n: int) -> int:
    return 0 if n <= 0 else pong(n - 1) + 1


def pong(n: int) -> int:
    return 0 if n <= 0 else ping(n - 1) + 1


def fails(x: int) -> int:
    if x % 3 == 0:
        raise ValueError(x)
    return leaf(x)


def total(values: list[int]) -> int:  # unhashable argument
    return sum(values)


def config(options: dict[str, Any]) -> int:  # unhashable, fingerprinted
    return len(options)


def fresh(x: int) -> object:  # returns a new identity-hashed object per call
    return object()


_impure = [0]


def impure(x: int) -> int:  # same key, different results
    _impure[0] += 1
    return _impure[0]


def counter_gen(n: int) -> Any:
    for i in range(n):
        yield leaf(i)


class Shape:
    def __init__(self, side: int) -> None:
        self.side = side

    def area(self) -> int:
        return square(self.side)

    def __hash__(self) -> int:
        return hash(("shape", self.side))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Shape) and other.side == self.side


class Plain:
    def value(self, x: int) -> int:  # self hashed by identity
        return x


class Heavy:
    """A __hash__ taking 30 reads of the run's TickClock (30 us): past the bound on user hashing
    (keys.USER_HASH_MAX_NS) once the budget is spent, at its 33rd timed hash."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __hash__(self) -> int:
        clock = _current[0].session.clock
        for _ in range(30):
            clock()
        return self.n


def weigh(h: Heavy) -> Heavy:
    return h


async def tick(x: int) -> int:
    await asyncio.sleep(0)
    return square(x)


async def child_task(x: int) -> int:
    value = await tick(x)
    return leaf(value)


async def broken(x: int) -> int:
    await asyncio.sleep(0)
    raise KeyError(x)


async def agen(n: int) -> Any:
    for i in range(n):
        await asyncio.sleep(0)
        yield i


async def main_async() -> int:
    results = await asyncio.gather(*(child_task(i) for i in range(4)))
    task = asyncio.create_task(child_task(7))
    results.append(await task)
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(tick(i % 2)) for i in range(3)]
    results.extend(t.result() for t in tasks)
    try:
        await broken(1)
    except KeyError:
        pass
    async for item in agen(3):
        results.append(item)
    return sum(results)


def threaded(i: int) -> int:
    return sum(square(j % 3) for j in range(i + 2))


def part_one() -> int:
    run = _current[0]
    out = 0
    for i in range(12):
        out += square(i % 4)  # keys with repeats
        out += fib(i % 6)
        try:
            out += fails(i)
        except ValueError:
            out += 1
    out += ping(7)
    out += sum(counter_gen(4))
    gen = counter_gen(5)
    out += next(gen)  # a generator left suspended: ended at stop
    run.keep = gen  # type: ignore[attr-defined]
    for values in ([1, 2], [3], [1, 2], [1, 2, 3]):
        out += total(values)
    out += config({"a": 1}) + config({"a": 1}) + config({"b": [1]})
    for i in (1, 1, 2):
        fresh(i)
        impure(i)
    for side in (1, 2, 1, 3):
        out += Shape(side).area()
    plain = Plain()
    out += plain.value(1) + plain.value(1)
    for heavy in HEAVY:
        weigh(heavy)
    return out


HEAVY = [Heavy(i % 5) for i in range(40)]  # made untraced (__init__'s self would be keyed)


def part_two() -> int:
    out = asyncio.run(main_async())
    for i in range(3):  # one at a time: the same clock readings on every run
        thread = threading.Thread(target=threaded, args=(i,), name=f"worker-{i}")
        thread.start()
        thread.join()
    out += sum(map(square, range(5)))  # called from C: each call is a root
    return out


def workload() -> int:
    out = part_one()
    _current[0].session.export_profile()  # a window in the middle: windows are deltas
    out += part_two()
    return out


# -- comparing runs ----------------------------------------------------------------------------


def spans(run: Traced) -> list[tuple[Any, ...]]:
    out = []
    for node in run.sink.closed:
        opened = {k: v for k, v in node.open_attributes.items() if k != "thread.id"}
        attributes = dict(node.attributes)
        # hashes of objects hashed by identity (self, a comprehension's iterator) differ from run
        # to run (not their counts)
        if attributes.get("callspan.args.identity") or "<genexpr>" in node.name or "<listcomp>" in node.name:
            attributes.pop("callspan.args.hash", None)
        if node.name.endswith(".fresh") or "<genexpr>" in node.name or "<listcomp>" in node.name:
            attributes.pop("callspan.return.hash", None)
        parent = node.parent.name if node.parent is not None else None
        out.append((node.name, parent, node.end_ns - node.start_ns, sorted(opened.items()),
                    sorted(attributes.items()), node.error))
    return out


# Key columns that depend on where objects hashed by identity were allocated: a new object at a
# freed one's address gets the same key (docs/span-schema.md, callspan.args.identity), so a
# comprehension's iterator or an identity-hashed self can repeat a key in one run and not the next.
ADDRESS_DEPENDENT = ("cache.keys", "cache.inconsistent_keys", "cache.inconsistent_calls", "cache.fresh_keys",
                     "cache.overlaps")


def identity_rows(window: dict[str, Any]) -> set[Any]:
    """Ids of the functions keyed by identity in one window: a comprehension (its iterator) or a
    function with any call keyed by identity (an identity-hashed self)."""
    names = dict(zip(window["function.id"], window["function.name"], strict=True))
    by_identity = {fid for fid, name in names.items() if "<genexpr>" in name or "<listcomp>" in name}
    return by_identity | {fid for fid, calls in zip(window["cache.function"], window["cache.identity_calls"],
                                                     strict=True) if calls}


def keys_not_by_identity(run: Traced) -> float:
    """The distinct keys held, less those of functions keyed by identity (how many of those there
    are depends on whether a freed object's address was reused: CI saw 74 against 75)."""
    by_identity = 0.0
    for window in run.sink.windows:
        rows = identity_rows(window)
        by_identity += sum(keys for fid, keys in zip(window["cache.function"], window["cache.keys"], strict=True)
                           if fid in rows)
    return run.session.recorder.aggregates.total_keys - by_identity


def windows(run: Traced) -> list[dict[str, list[Any]]]:
    """The exported windows, with the address-dependent key figures of functions keyed by
    identity blanked (their calls, identity calls and everything else still compared)."""
    out = []
    for window in run.sink.windows:
        window = {name: list(values) for name, values in window.items()}
        assert window.pop("lost_calls", [0]) == [0]
        by_identity = identity_rows(window)
        for row, fid in enumerate(window["cache.function"]):
            if fid in by_identity:
                for column in ADDRESS_DEPENDENT:
                    window[column][row] = None
        kept = [row for row, fid in enumerate(window["reuse.function"]) if fid not in by_identity]
        for column in [name for name in window if name.startswith("reuse.")]:
            window[column] = [window[column][row] for row in kept]
        out.append(window)
    return out


def run_pair(pair: tuple[str, str], body: Any, **settings: Any) -> tuple[Traced, Traced]:
    runs = []
    for core in pair:
        _impure[0] = 0
        run = Traced(core, key_secret=SECRET, **settings)
        assert run.session.core.name == core
        _current[0] = run
        run.run(body)  # no argument: the Traced object would be keyed by its (varying) hash
        runs.append(run)
    return runs[0], runs[1]


def assert_equal_runs(python: Traced, compiled: Traced) -> None:
    assert compiled.session.recorder.faults == python.session.recorder.faults == 0
    assert windows(compiled) == windows(python)
    assert list(compiled.sink.windows[-1]) == list(python.sink.windows[-1])  # same columns, same order
    assert spans(compiled) == spans(python)
    assert compiled.session.recorder.dropped == python.session.recorder.dropped


@pytest.mark.parametrize("pair", PAIRS, ids=lambda pair: pair[1])
# few-spans and no-spans: most calls of the compiled cores run as C call frames, made Records only
# when a coroutine or generator starts or resumes above them, or when the session stops.
@pytest.mark.parametrize("settings", [{}, {"max_spans_per_trace": 3, "max_spans_per_second": 5},
                                      {"max_spans_per_second": 0}],
                         ids=["default", "few-spans", "no-spans"])
def test_compiled_fold_equals_the_python_reference(pair: tuple[str, str], settings: dict[str, Any]) -> None:
    python, compiled = run_pair(pair, workload, **settings)
    assert len(python.sink.windows) == 2
    assert python.sink.windows[-1]["function.id"]  # the workload was traced
    assert_equal_runs(python, compiled)
    # The compiled aggregates replaced the Python ones, with the same limits and counters.
    aggregates = compiled.session.recorder.aggregates
    assert type(aggregates).__module__ == "callspan.tracer._hotpath"
    reference = python.session.recorder.aggregates
    for name in ("max_nodes", "max_depth", "max_keys", "max_keys_total", "other_calls"):
        assert getattr(aggregates, name) == getattr(reference, name), name
    assert keys_not_by_identity(compiled) == keys_not_by_identity(python) > 0


# -- limits ------------------------------------------------------------------------------------


def deep(n: int) -> int:
    return 0 if n == 0 else step(n - 1) + 1


def step(n: int) -> int:
    return deep(n)


def many_paths() -> int:
    return sum(f(i) for i in range(3) for f in (leaf, square, fib, ping, pong, fails_safe))


def fails_safe(x: int) -> int:
    try:
        return fails(x)
    except ValueError:
        return -1


def many_keys() -> int:
    out = 0
    for i in range(300):
        out += square(i)
        out += square(i // 2)
    for i in range(200):
        out += leaf(i)
    return out


@pytest.mark.parametrize("pair", PAIRS, ids=lambda pair: pair[1])
def test_node_cap_folds_into_other_the_same_way(pair: tuple[str, str]) -> None:
    python, compiled = run_pair(pair, many_paths, max_nodes=5)
    assert python.session.recorder.aggregates.other_calls > 0
    assert "(other)" in python.sink.windows[-1]["node.label"]
    assert any(window["edge.calls"] for window in python.sink.windows)  # pairs of folded calls, compared too
    assert_equal_runs(python, compiled)


@pytest.mark.parametrize("pair", PAIRS, ids=lambda pair: pair[1])
def test_depth_cap_folds_deeper_calls_the_same_way(pair: tuple[str, str]) -> None:
    python, compiled = run_pair(pair, lambda: deep(30), max_depth=6)
    assert python.sink.windows[-1]["other_nodes"][0] > 0
    assert_equal_runs(python, compiled)


@pytest.mark.parametrize("pair", PAIRS, ids=lambda pair: pair[1])
def test_key_cap_samples_keys_the_same_way(pair: tuple[str, str]) -> None:
    python, compiled = run_pair(pair, many_keys, max_keys=16)
    rates = python.sink.windows[-1]["cache.rate"]
    assert min(rates) < 1
    assert_equal_runs(python, compiled)


@pytest.mark.parametrize("pair", PAIRS, ids=lambda pair: pair[1])
def test_process_key_budget_sheds_the_same_way(pair: tuple[str, str]) -> None:
    python, compiled = run_pair(pair, many_keys, max_keys_total=40)
    assert python.session.recorder.aggregates.total_keys <= 40
    assert min(python.sink.windows[-1]["cache.rate"]) < 1
    assert_equal_runs(python, compiled)


def cheap_calls() -> int:
    return sum(square(i % 100) for i in range(3000)) + sum(leaf(i) for i in range(20))


@pytest.mark.parametrize("pair", PAIRS, ids=lambda pair: pair[1])
def test_cheap_functions_stop_being_keyed_the_same_way(pair: tuple[str, str]) -> None:
    # Every call measures >= 1 tick (1000 ns) of the injected clock: below 10**6 ns, "cheap".
    python, compiled = run_pair(pair, cheap_calls, key_min_ns=10**6)
    window = python.sink.windows[-1]
    names = dict(zip(window["function.id"], window["function.name"], strict=True))
    cheap = {names[f].rsplit(".", 1)[-1]: (c, n) for f, c, n in
             zip(window["cache.function"], window["cache.cheap_ns"], window["cache.calls"], strict=True)}
    assert cheap["square"][0] > 0 and cheap["square"][1] == 1024  # keyed until the probe ended
    assert cheap["leaf"] == (0, 20)  # too few calls to judge
    assert_equal_runs(python, compiled)


@pytest.mark.parametrize("pair", PAIRS, ids=lambda pair: pair[1])
def test_max_pending_drops_spans_not_calls(pair: tuple[str, str]) -> None:
    python, compiled = run_pair(pair, lambda: [square(i) for i in range(50)], max_pending=10)
    assert python.session.recorder.dropped > 0
    assert_equal_runs(python, compiled)


@pytest.mark.parametrize("pair", PAIRS, ids=lambda pair: pair[1])
def test_evicted_generators_are_folded_the_same_way(pair: tuple[str, str]) -> None:
    def abandon() -> None:
        run = _current[0]
        run.gens = [counter_gen(3) for _ in range(6)]  # type: ignore[attr-defined]
        for gen in run.gens:  # type: ignore[attr-defined]
            next(gen)

    runs = []
    for core in pair:
        run = Traced(core, key_secret=SECRET)
        # The limit is read when the hot paths are made: make them again.
        recorder, core_object = run.session.recorder, run.session.core
        recorder.max_suspended = 3
        hot = getattr(core_object, "hot", None)
        if hot is not None:
            hot.max_suspended = 3
        else:
            recorder._build()
            if hasattr(core_object, "_make_hook"):  # setprofile
                core_object._hook = core_object._make_hook()
        _current[0] = run
        run.run(abandon)
        runs.append(run)
    assert_equal_runs(*runs)
    assert sum(1 for n in runs[0].sink.closed if n.attributes.get("callspan.incomplete")) == 6


# -- the compiled aggregates on their own ------------------------------------------------------


def test_compiled_aggregates_interface() -> None:
    from callspan.tracer import _hotpath
    from callspan.tracer.aggregate import WINDOW_COLUMNS

    aggregates = _hotpath.Aggregates(max_nodes=10, max_depth=3, max_keys=5, max_keys_total=7)
    assert (aggregates.max_nodes, aggregates.max_depth, aggregates.max_keys, aggregates.max_keys_total) == (10, 3, 5, 7)
    assert aggregates.other_calls == aggregates.total_keys == aggregates.lost_calls == 0
    window = aggregates.export_window()
    assert list(window) == [*WINDOW_COLUMNS, "other_nodes", "lost_edges", "window", "lost_calls"]
    assert all(window[name] == [] for name in WINDOW_COLUMNS)
    assert window["window"] == [0] and aggregates.export_window()["window"] == [1]
    aggregates.forget_parent()
    assert aggregates.export_window()["window"] == [0]
    with pytest.raises(TypeError):
        aggregates.fold_record([None] * 23, None, False)


def test_sketch_buckets_match_the_reference() -> None:
    from callspan.config import Settings
    from callspan.tracer.aggregate import sketch_bucket
    from callspan.tracer.session import Session
    from tests.conftest import TESTS_DIR, RecordingSink

    # Each call is a root, which reads the clock three times (keep_root, start, end): a call of
    # each wall time, through the fold.
    walls = [0, 1, 2, 3, 1000, 1001, 1_000_000, 123_456_789, 10**12, 2**62]
    readings = iter([0] + [x for w in walls for x in (0, 0, w)])  # the session reads it once first
    core = "csysmon" if _env.HAS_SYS_MONITORING else "csetprofile"
    sink = RecordingSink()
    session = Session(Settings(core=core, cpu="off", keys="off"), sink, default_roots=(TESTS_DIR,),
                      clock=lambda: next(readings, 0), background=False)
    session.start()
    for _ in walls:
        leaf(0)
    session.core.stop()
    (window,) = [session.recorder.aggregates.export_window()]
    expected: dict[int, int] = {}
    for wall in walls:
        expected[sketch_bucket(wall)] = expected.get(sketch_bucket(wall), 0) + 1
    assert dict(zip(window["wall.bucket"], window["wall.count"], strict=True)) == expected


def test_compiled_sketch_bucket_is_the_reference_at_every_boundary() -> None:
    # The compiled fold reads buckets from tables (64 slices per power of two, each bucket's
    # first value): every bucket's exact first value and its neighbours, every slice's ends, and
    # random values of every size give the reference's bucket.
    import random

    from callspan.tracer import _hotpath
    from callspan.tracer.aggregate import sketch_bucket

    values = [-5, 0, 1, 2, 3, 4, 63, 64, 65, 1000, 2**53, 2**53 + 1, 2**62, 2**63 - 1]
    for bucket in range(sketch_bucket(2) + 1, sketch_bucket(2**63 - 1) + 1):
        lo, hi = 2, 2**63 - 1  # sketch_bucket(lo) < bucket <= sketch_bucket(hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if sketch_bucket(mid) >= bucket else (mid, hi)
        values += [v for v in range(hi - 2, hi + 3) if v < 2**63]
    for top in range(6, 63):
        for slice_ in range(64):
            low = (64 + slice_) << (top - 6)
            values += [low, low + (1 << (top - 6)) - 1]
    rng = random.Random(7)
    values += [rng.randrange(2, 2 ** rng.randrange(2, 64)) for _ in range(100_000)]
    assert [_hotpath.sketch_bucket(v) for v in values] == [sketch_bucket(v) for v in values]


def deep_chain(n: int) -> int:
    return 0 if n == 0 else deep_chain(n - 1) + 1


def test_a_deep_recursion_folds_into_one_node_without_crashing() -> None:
    from tests.tracer.test_hotpath import compiled_session

    depth = 300_000
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(depth + 1000)
    try:
        session = compiled_session(max_spans_per_trace=100)
        session.start()
        assert deep_chain(depth) == depth
        session.stop()
    finally:
        sys.setrecursionlimit(limit)
    (window,) = session.builder.sink.windows
    calls = dict(zip(window["function.name"], window["function.calls"], strict=True))
    assert calls[f"{__name__}.deep_chain"] == depth + 1
    assert len(session.builder.sink.closed) == 100
    assert window["node.calls"].count(depth + 1) == 1  # direct recursion: one node
