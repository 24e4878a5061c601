"""The limits on the user ``__hash__`` calls keys may make (CALLSPAN_USER_HASH=on): a bound on the
time a function's user hashes take, types whose ``__hash__`` never runs, functions never keyed.

A fake slow ``__hash__`` advances the injected clock instead of sleeping: every figure is exact,
the same on every core (the compiled ones and their Python references)."""

from __future__ import annotations

from typing import Any

from callspan.tracer import keys
from callspan.tracer.keys import USER_HASH_BUDGET_NS, USER_HASH_MAX_NS

STEP = 1000  # ns per clock read


class HashClock:
    """A clock advancing by STEP per read, and by what a fake slow __hash__ says it took."""

    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        self.now += STEP
        return self.now

    def advance(self, ns: int) -> None:
        self.now += ns


CLOCK = HashClock()  # the clock of the run in progress (set by each test)


class Costly:
    """A value type whose __hash__ "takes" ``Costly.cost`` ns of the injected clock."""

    cost = 0
    hashes = 0

    def __init__(self, n: int) -> None:
        self.n = n

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Costly) and other.n == self.n

    def __hash__(self) -> int:
        Costly.hashes += 1
        CLOCK.advance(Costly.cost)
        return hash(self.n)


class Locked(Costly):
    """A type whose __hash__ must never run inside the hook (CALLSPAN_USER_HASH_SKIP)."""

    def __hash__(self) -> int:
        raise AssertionError("a skipped type's __hash__ ran")


def identity(value: Any) -> Any:
    return value


def pair(a: Any, b: int) -> int:
    return b


def first(items: list[Any]) -> int:
    return 0


def run_costly(traced: Any, cost: int, calls: int, func: Any = identity, wrap: Any = None, **settings: Any) -> Any:
    global CLOCK
    CLOCK = HashClock()
    Costly.cost, Costly.hashes = cost, 0
    run = traced(clock=CLOCK, max_spans_per_trace=100_000, max_spans_per_second=100_000, **settings)

    # made untraced: __init__'s self is keyed too
    values = [wrap(Costly(i % 4)) if wrap else Costly(i % 4) for i in range(calls)]

    def workload() -> None:
        for value in values:
            func(value)

    run.run(workload)
    return run


def info_of(run: Any, name: str) -> Any:
    (info,) = [i for i in run.session.recorder.infos.values()
               if i is not None and i.name == f"{__name__}.{name}"]
    return info


def cache_row(run: Any, name: str) -> dict[str, Any]:
    (window,) = run.sink.windows
    function_id = window["function.id"][window["function.name"].index(f"{__name__}.{name}")]
    row = window["cache.function"].index(function_id)
    return {column: window[column][row] for column in window if column.startswith("cache.")}


def test_a_user_hash_far_above_the_bound_runs_once_then_never(traced) -> None:  # type: ignore[no-untyped-def]
    # 20 ms per __hash__ (the program): the first key's hash passes the bound at once, so
    # the return value of that call is not hashed, and neither is anything of the 19 calls after.
    run = run_costly(traced, 20_000_000, 20)
    assert Costly.hashes == 1
    info = info_of(run, "identity")
    assert (info.slow_hash, info.hash_ns, info.hash_runs) == (True, 20_000_000 + STEP, 1)
    nodes = sorted(run.sink.named(".identity"), key=lambda n: n.start_ns)
    assert len(nodes) == 20
    assert "callspan.args.hash" in nodes[0].attributes and "callspan.return.hash" not in nodes[0].attributes
    assert all("callspan.args.hash" not in n.attributes for n in nodes[1:])
    assert {n.attributes["callspan.args.unhashable"] for n in nodes[1:]} == {"Costly:slow-hash"}
    row = cache_row(run, "identity")
    # counted, never silently dropped: 1 keyed call, 19 not keyed for their slow hash
    assert (row["cache.calls"], row["cache.unhashable_calls"]) == (1, 19)
    assert row["cache.unhashable_types"] == "Costly:slow-hash"
    assert row["cache.unhashable_returns"] == 1  # the first call's return: not hashed any more


def test_a_user_hash_just_above_the_mean_stops_when_the_budget_is_spent(traced) -> None:  # type: ignore[no-untyped-def]
    # 15 us per hash (16 us with the clock's own step): the budget of 1 ms is spent at the 63rd
    # timed hash (63 x 16 us > 1 ms), the argument key of call 32 (each call hashes its argument
    # and its return value).
    per_hash = 15_000 + STEP
    assert per_hash > USER_HASH_MAX_NS
    runs = USER_HASH_BUDGET_NS // per_hash + 1
    assert runs == 63
    run = run_costly(traced, 15_000, 100)
    assert Costly.hashes == runs
    info = info_of(run, "identity")
    assert (info.slow_hash, info.hash_ns, info.hash_runs) == (True, runs * per_hash, runs)
    row = cache_row(run, "identity")
    assert (row["cache.calls"], row["cache.unhashable_calls"], row["cache.unhashable_returns"]) == (32, 68, 1)


def test_a_user_hash_below_the_mean_is_never_stopped(traced) -> None:  # type: ignore[no-untyped-def]
    # 8 us per hash (9 us timed): 600 timed hashes, 5.4 ms in all, far past the budget but below
    # the mean bound: every call stays keyed, as lru_cache would hash every one.
    run = run_costly(traced, 8_000, 300)
    assert Costly.hashes == 600
    info = info_of(run, "identity")
    assert (info.slow_hash, info.hash_ns, info.hash_runs) == (False, 600 * 9_000, 600)
    row = cache_row(run, "identity")
    assert (row["cache.calls"], row["cache.unhashable_calls"], row["cache.keys"]) == (300, 0, 4)


def built_in_keys() -> None:
    for i in range(50):
        pair((i, "x" * 100), i)


def test_built_in_hashes_are_never_timed(traced) -> None:  # type: ignore[no-untyped-def]
    # A key of built-in values reads no clock for hashing: the clock is read as often as
    # without any key.
    global CLOCK
    reads, runs = [], []
    for setting in ("on", "off"):
        CLOCK = HashClock()
        runs.append(traced(clock=CLOCK, keys=setting))
        runs[-1].run(built_in_keys)
        reads.append(CLOCK.now // STEP)
    assert reads[0] == reads[1] >= 100
    assert cache_row(runs[0], "pair")["cache.calls"] == 50
    info = info_of(runs[0], "pair")
    assert (info.slow_hash, info.hash_ns, info.hash_runs) == (False, 0, 0)


def test_the_bound_also_covers_user_hashes_inside_fingerprinted_lists(traced) -> None:  # type: ignore[no-untyped-def]
    run = run_costly(traced, 20_000_000, 10, func=first, wrap=lambda c: [c, c])
    assert Costly.hashes == 2  # one list's fingerprint: both items, then never again
    info = info_of(run, "first")
    assert (info.slow_hash, info.hash_runs) == (True, 1)


def test_skipped_types_are_never_hashed_and_counted_as_user_hash(traced) -> None:  # type: ignore[no-untyped-def]
    global CLOCK
    CLOCK = HashClock()
    Costly.cost, Costly.hashes = 0, 0
    run = traced(clock=CLOCK, user_hash_skip=(f"{__name__}.Lock*",))

    locked, costly = [Locked(i) for i in range(10)], [Costly(i) for i in range(10)]

    def workload() -> None:
        for i in range(10):
            identity(locked[i])
            identity((1, locked[i]))  # inside a tuple, too
            pair(costly[i], i)  # other types still hash
            identity(costly[i])

    run.run(workload)
    assert Costly.hashes == 30  # pair's argument, identity's argument and return value
    row = cache_row(run, "identity")
    assert (row["cache.calls"], row["cache.unhashable_calls"]) == (10, 20)
    assert row["cache.unhashable_types"] == "Locked:user-hash,tuple:user-hash"
    assert cache_row(run, "pair")["cache.calls"] == 10
    assert info_of(run, "identity").slow_hash is False


def test_functions_excluded_from_keys_are_not_keyed(traced) -> None:  # type: ignore[no-untyped-def]
    run = run_costly(traced, 0, 10, keys_exclude=("*.identity",))
    assert Costly.hashes == 0
    assert info_of(run, "identity").keys is False
    nodes = run.sink.named(".identity")
    assert len(nodes) == 10 and not any("callspan.args.hash" in n.attributes for n in nodes)
    (window,) = run.sink.windows
    function_id = window["function.id"][window["function.name"].index(f"{__name__}.identity")]
    assert function_id not in window["cache.function"]


def test_the_python_reference_times_exactly_what_the_compiled_path_does() -> None:
    # keys.args_key on a frame holding a slow value: one timed hash, then refused (SLOW).
    from callspan.tracer.selection import CodeInfo

    class Frame:
        f_locals = {"value": Costly(1)}

    global CLOCK
    CLOCK = HashClock()
    Costly.cost, Costly.hashes = 20_000_000, 0
    keys.set_user_hash(True)
    try:
        info = CodeInfo(identity.__code__, __name__, True)
        raw, names, _ = keys.args_key(info, Frame(), CLOCK)  # type: ignore[arg-type]
        assert raw is not None and names == "" and info.slow_hash
        assert keys.args_key(info, Frame(), CLOCK)[:2] == (None, "Costly:slow-hash")  # type: ignore[arg-type]
        assert keys.value_key(Costly(2), info, CLOCK) == (None, False)
        assert Costly.hashes == 1
    finally:
        keys.set_user_hash(False)


class LazyProxy:
    """A proxy whose __hash__ sets up what it wraps (as Django's LazyObject does): its
    subclasses are skipped by the base class's name."""

    hashes = 0

    def __hash__(self) -> int:
        LazyProxy.hashes += 1
        return 1


class LazySettingsLike(LazyProxy):
    pass


def test_a_skipped_type_skips_its_subclasses(traced) -> None:  # type: ignore[no-untyped-def]
    LazyProxy.hashes = 0
    run = traced(user_hash_skip=(f"{__name__}.LazyProxy",))
    values = [LazySettingsLike() for _ in range(5)]
    run.run(lambda: [identity(v) for v in values])
    assert LazyProxy.hashes == 0
    row = cache_row(run, "identity")
    assert (row["cache.calls"], row["cache.unhashable_calls"]) == (0, 5)  # none keyed: all skipped
    assert row["cache.unhashable_types"] == "LazySettingsLike:user-hash"
