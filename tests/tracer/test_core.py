"""Behaviour of the tracer, run against every core this interpreter has (see conftest.core)."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import threading

import pytest

from callspan import _env


def leaf(x: int) -> int:
    return x + 1


def middle(x: int) -> int:
    return leaf(x) * 2


def fails(x: int) -> int:
    raise ValueError(f"bad {x}")


def catches() -> str:
    try:
        fails(1)
    except ValueError as exc:
        return str(exc)
    return "no"


def fib(n: int) -> int:
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def numbers(n: int):  # type: ignore[no-untyped-def]
    yield from range(n)


def consume() -> int:
    return sum(numbers(3))


def by_name(nodes, name):  # type: ignore[no-untyped-def]
    return [n for n in nodes if n.name == f"{__name__}.{name}"]


def test_nested_calls_become_nested_spans_with_exact_times(traced) -> None:  # type: ignore[no-untyped-def]
    run = traced()
    assert run.run(middle, 1) == 4
    (m,) = by_name(run.sink.closed, "middle")
    (lf,) = by_name(run.sink.closed, "leaf")
    assert lf.parent is m and m.parent is None
    # TickClock advances 1000 per read; reads: start middle, start leaf, end leaf, end middle.
    assert lf.end_ns - lf.start_ns == 1000
    assert m.end_ns - m.start_ns == 3000
    # TickCounter advances 1 per read on this thread, same order.
    assert lf.attributes["callspan.cpu.total"] == 1 and lf.attributes["callspan.cpu.self"] == 1
    assert m.attributes["callspan.cpu.total"] == 3 and m.attributes["callspan.cpu.self"] == 2
    assert m.open_attributes["code.function.name"] == f"{__name__}.middle"
    assert m.open_attributes["code.file.path"] == __file__
    assert m.open_attributes["code.line.number"] == middle.__code__.co_firstlineno
    assert m.open_attributes["thread.id"] == threading.get_ident()
    assert m.open_attributes["thread.name"] == threading.current_thread().name
    assert m.open_attributes["callspan.kind"] == "function"
    assert m.attributes["callspan.run_ns"] == 3000


def test_exception_sets_error_and_reaches_the_caller_unchanged(traced, core) -> None:  # type: ignore[no-untyped-def]
    run = traced()
    assert run.run(catches) == "bad 1"
    (f,) = by_name(run.sink.closed, "fails")
    (c,) = by_name(run.sink.closed, "catches")
    assert f.parent is c and c.error is None
    if core in ("sysmon", "csysmon"):
        assert f.error == "ValueError" and f.attributes["error.type"] == "builtins.ValueError"
    else:
        assert f.error == "_OTHER" and f.attributes["error.type"] == "_OTHER"
    assert "callspan.return.hash" not in f.attributes
    with pytest.raises(ValueError, match="bad 7"):
        traced().run(fails, 7)


def test_recursion_gives_one_span_per_call_nested(traced) -> None:  # type: ignore[no-untyped-def]
    run = traced()
    assert run.run(fib, 6) == 8
    spans = by_name(run.sink.closed, "fib")
    assert len(spans) == 25  # calls of fib(6)
    roots = [s for s in spans if s.parent is None]
    assert len(roots) == 1

    def depth(node):  # type: ignore[no-untyped-def]
        return 0 if node.parent is None else 1 + depth(node.parent)

    assert max(depth(s) for s in spans) == 5


def test_generator_yields_are_not_awaits(traced) -> None:  # type: ignore[no-untyped-def]
    run = traced()
    assert run.run(consume) == 3
    (g,) = by_name(run.sink.closed, "numbers")
    (c,) = by_name(run.sink.closed, "consume")
    assert g.parent is c
    assert g.open_attributes["callspan.kind"] == "generator"
    assert g.attributes["callspan.yield.count"] == 3
    assert "callspan.await.count" not in g.attributes
    assert g.error is None


def first_positive(values: list[int]) -> bool:
    return any(v > 0 for v in values)  # the generator is left suspended at the first positive


def scan(rounds: int) -> int:
    found = 0
    for i in range(rounds):
        found += first_positive([0] * (i % 3) + [1, 2])
    return found


def test_abandoned_generators_are_each_counted_when_their_frames_are_reused(traced) -> None:  # type: ignore[no-untyped-def]
    # Each generator is dropped while suspended; its close runs no event on 3.13, and on 3.11/3.12
    # under setprofile it looks like one more yield. The next generator's frame takes the freed
    # address: it must start a call of its own, and the dead one end where it last suspended.
    run = traced()
    assert run.run(scan, 60) == 60
    calls: dict[str, int] = {}
    for window in run.sink.windows:
        for name, count in zip(window["function.name"], window["function.calls"], strict=True):
            short = "<genexpr>" if name.endswith("<genexpr>") else name.rsplit(".", 1)[-1]
            calls[short] = calls.get(short, 0) + count
    assert calls == {"scan": 1, "first_positive": 60, "<genexpr>": 60}
    generators = run.sink.named("<genexpr>")
    assert len(generators) == 60 and all(g.parent.name.endswith("first_positive") for g in generators)


async def fetch(n: int) -> int:
    await asyncio.sleep(0)
    return n * 10


async def handler_a() -> list[int]:
    return list(await asyncio.gather(fetch(1), fetch(2), fetch(3)))


async def handler_b() -> list[int]:
    return list(await asyncio.gather(fetch(4)))


async def serve() -> list[list[int]]:
    return list(await asyncio.gather(handler_a(), handler_b()))


def test_gathered_coroutines_belong_to_their_own_caller_3_to_1(traced) -> None:  # type: ignore[no-untyped-def]
    run = traced()
    assert run.run(asyncio.run, serve()) == [[10, 20, 30], [40]]
    (a,) = by_name(run.sink.closed, "handler_a")
    (b,) = by_name(run.sink.closed, "handler_b")
    (s,) = by_name(run.sink.closed, "serve")
    fetches = by_name(run.sink.closed, "fetch")
    assert len(fetches) == 4
    assert sum(1 for f in fetches if f.parent is a) == 3
    assert sum(1 for f in fetches if f.parent is b) == 1
    assert a.parent is s and b.parent is s and s.parent is None
    assert all(f.open_attributes["callspan.parent.via"] == "task" for f in fetches)
    assert all(f.open_attributes["callspan.kind"] == "coroutine" for f in fetches)
    assert all(f.attributes["callspan.await.count"] == 1 for f in fetches)


async def spawner() -> int:
    t1 = asyncio.create_task(fetch(1))
    t2 = asyncio.ensure_future(fetch(2))
    async with asyncio.TaskGroup() as group:
        t3 = group.create_task(fetch(3))
    t4 = await asyncio.wait_for(fetch(4), timeout=5)
    return await t1 + await t2 + t3.result() + t4


def test_create_task_ensure_future_taskgroup_wait_for_parent_to_creator(traced) -> None:  # type: ignore[no-untyped-def]
    run = traced()
    assert run.run(asyncio.run, spawner()) == 100
    (sp,) = by_name(run.sink.closed, "spawner")
    fetches = by_name(run.sink.closed, "fetch")
    assert len(fetches) == 4 and all(f.parent is sp for f in fetches)


async def sleeper() -> str:
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    return "done"


def test_await_suspensions_are_counted_and_timed_exactly(traced) -> None:  # type: ignore[no-untyped-def]
    run = traced()
    assert run.run(asyncio.run, sleeper()) == "done"
    (s,) = by_name(run.sink.closed, "sleeper")
    # Clock reads: start, (suspend, resume) x2, return: each suspension lasts one tick.
    assert s.attributes["callspan.await.count"] == 2
    assert s.attributes["callspan.await.suspended_ns"] == 2000
    assert s.end_ns - s.start_ns == 5000
    assert s.attributes["callspan.run_ns"] == 3000
    # CPU only counts running segments: reads at start/suspend/resume/suspend/resume/return.
    assert s.attributes["callspan.cpu.total"] == 3


async def forever() -> None:
    await asyncio.sleep(3600)


async def cancel_one() -> str:
    task = asyncio.create_task(forever())
    await asyncio.sleep(0)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        return "cancelled"
    return "not cancelled"


def test_cancellation_is_an_error_of_the_cancelled_coroutine_only(traced, core) -> None:  # type: ignore[no-untyped-def]
    run = traced()
    assert run.run(asyncio.run, cancel_one()) == "cancelled"
    (f,) = by_name(run.sink.closed, "forever")
    (c,) = by_name(run.sink.closed, "cancel_one")
    assert f.parent is c and c.error is None
    expected = "CancelledError" if core in ("sysmon", "csysmon") else "_OTHER"
    assert f.error == expected
    assert f.attributes["callspan.await.count"] == 1


def test_threads_have_their_own_stacks(traced) -> None:  # type: ignore[no-untyped-def]
    if not _env.HAS_SETPROFILE_ALL_THREADS and not _env.HAS_SYS_MONITORING:
        pass  # 3.11 setprofile reaches threads started after start(): these are.
    run = traced()
    results: dict[str, int] = {}
    both_alive = threading.Barrier(2)

    def worker(name: str, x: int) -> None:
        both_alive.wait()  # so the two threads cannot share an ident
        results[name] = middle(x)

    def main() -> None:
        threads = [threading.Thread(target=worker, args=(f"t{i}", i), name=f"t{i}") for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    run.run(main)
    assert results == {"t0": 2, "t1": 4}
    middles = by_name(run.sink.closed, "middle")
    assert len(middles) == 2
    for m in middles:
        (lf,) = [lf for lf in by_name(run.sink.closed, "leaf") if lf.parent is m]
        assert lf.open_attributes["thread.id"] == m.open_attributes["thread.id"]
    assert {m.open_attributes["thread.name"] for m in middles} == {"t0", "t1"}
    assert len({m.open_attributes["thread.id"] for m in middles}) == 2


def test_calls_running_at_stop_are_ended_and_marked_incomplete(traced) -> None:  # type: ignore[no-untyped-def]
    run = traced()

    def outer() -> None:
        run.session.stop()

    run.session.start()
    inner_started = []

    def body() -> None:
        inner_started.append(1)
        outer()

    body()
    assert [n.name.rsplit(".", 1)[-1] for n in run.sink.closed] == ["outer", "body"]
    assert all(n.attributes["callspan.incomplete"] is True for n in run.sink.closed)


class Weird:
    def __hash__(self) -> int:
        raise RuntimeError("no hashing here")


def takes(obj: object) -> object:
    return obj


def test_hostile_hash_does_not_reach_the_program(traced) -> None:  # type: ignore[no-untyped-def]
    run = traced()
    w = Weird()
    assert run.run(takes, w) is w
    (t,) = by_name(run.sink.closed, "takes")
    assert "callspan.args.hash" not in t.attributes
    assert run.session.recorder.faults == 0


def test_unselected_code_is_decided_once(traced) -> None:  # type: ignore[no-untyped-def]
    run = traced(exclude=(f"{__name__}",))
    run.run(lambda: [middle(i) for i in range(50)])
    assert run.sink.closed == []
    assert run.session.recorder.infos.get(middle.__code__, "missing") is None


def test_stop_restores_previous_profile_function(traced) -> None:  # type: ignore[no-untyped-def]
    seen: list[str] = []

    def profiler(frame, event, arg):  # type: ignore[no-untyped-def]
        if event == "call" and frame.f_code is leaf.__code__:
            seen.append("leaf")

    for_new_threads = object()
    run = traced()
    sys.setprofile(profiler)
    threading.setprofile(for_new_threads)  # type: ignore[arg-type]
    try:
        assert run.run(middle, 1) == 4
        assert sys.getprofile() is profiler and threading.getprofile() is for_new_threads
        leaf(1)
    finally:
        sys.setprofile(None)
        threading.setprofile(None)  # type: ignore[arg-type]
    assert len(by_name(run.sink.closed, "leaf")) == 1
    # The setprofile cores replace it while they run; it gets the call after they stop.
    assert seen == (["leaf"] if "sysmon" in run.session.core.name else []) + ["leaf"]


def cprofiled_calls(traced) -> int:  # type: ignore[no-untyped-def]
    import cProfile
    import pstats

    profile = cProfile.Profile()
    run = traced()
    profile.enable()
    try:
        run.run(middle, 1)
        leaf(2)
    finally:
        profile.disable()
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    assert len(by_name(run.sink.closed, "leaf")) == 1
    return sum(calls for (_, _, name), (calls, *_) in stats.items() if name == "leaf")


def test_cprofile_started_before_keeps_profiling_beside_and_after(traced) -> None:  # type: ignore[no-untyped-def]
    # cProfile is a C profile function on 3.11 (restored by the setprofile cores at stop) and a
    # sys.monitoring tool (id 2) on 3.12+, which callspan leaves to it.
    calls = cprofiled_calls(traced)
    replaced_while_tracing = "setprofile" in traced().session.core.name and not _env.HAS_SYS_MONITORING
    assert calls == (1 if replaced_while_tracing else 2)


@pytest.mark.skipif(not _env.HAS_SYS_MONITORING, reason="sys.monitoring is 3.12+")
def test_sysmon_cores_take_a_tool_id_nobody_names(traced, core) -> None:  # type: ignore[no-untyped-def]
    if "sysmon" not in core:
        pytest.skip("setprofile cores use no tool id")
    run = traced()
    assert "sys.monitoring tool id 3" in run.session.facts.core_reason
    run.session.start()
    try:
        assert sys.monitoring.get_tool(3) == "callspan"
        assert sys.monitoring.get_tool(sys.monitoring.PROFILER_ID) is None
        sys.monitoring.use_tool_id(4, "other")
        try:
            second = traced()
            assert second.session.facts.core_reason.endswith(
                "sys.monitoring tool id 2 (3 and 4 are in use: 3 by 'callspan', 4 by 'other')")
        finally:
            sys.monitoring.free_tool_id(4)
    finally:
        run.session.stop()


def test_selection_prefers_the_most_specific_prefix(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from callspan.tracer.selection import Selector

    site = tmp_path / "lib" / "site-packages"
    (site / "shop").mkdir(parents=True)
    (tmp_path / "app").mkdir()
    selector = Selector(default_roots=(str(site / "shop"), str(tmp_path)))
    selector.never_paths = (str(site) + "/",)

    def code_at(path: str):  # type: ignore[no-untyped-def]
        return compile("def f():\n    pass\n", path, "exec").co_consts[0]

    assert selector.selects(code_at(str(site / "shop" / "main.py")), "__main__")  # installed script
    assert not selector.selects(code_at(str(site / "other" / "lib.py")), "other.lib")  # a dependency
    assert selector.selects(code_at(str(tmp_path / "app" / "views.py")), "app.views")  # own code


def takes_request(req: dict, n: int = 0) -> int:  # type: ignore[type-arg]
    return len(req)


def takes_list(items: list) -> int:  # type: ignore[type-arg]
    return len(items)


def unkeyable_then_keyable(n: int) -> None:
    for i in range(n):
        takes_request({"user": {"id": i}})  # a nested dict: cannot be keyed, not even fingerprinted
        takes_list([i % 3])  # unhashable but fingerprinted: keyed


def test_functions_whose_arguments_never_key_stop_being_keyed(traced) -> None:  # type: ignore[no-untyped-def]
    from callspan.tracer.keys import UNKEYABLE_AFTER

    run = traced(max_spans_per_trace=100_000, max_spans_per_second=100_000)
    run.run(unkeyable_then_keyable, UNKEYABLE_AFTER + 6)
    requests = sorted(by_name(run.sink.closed, "takes_request"), key=lambda n: n.start_ns)
    lists = by_name(run.sink.closed, "takes_list")
    assert len(requests) == len(lists) == UNKEYABLE_AFTER + 6
    # Every call still names its unhashable argument type; the calls before the one that reaches
    # UNKEYABLE_AFTER also carry their return value's hash, the later ones are not keyed at all.
    assert all(n.attributes["callspan.args.unhashable"] == "req:dict" for n in requests)
    assert all("callspan.args.hash" not in n.attributes for n in requests)
    with_return = [n for n in requests if "callspan.return.hash" in n.attributes]
    assert with_return == requests[: UNKEYABLE_AFTER - 1]
    assert all("callspan.args.hash" in n.attributes and "callspan.return.hash" in n.attributes for n in lists)


def sized_result(i: int) -> str:
    return "x" * i


def many_sized(n: int) -> None:
    for i in range(n):
        sized_result(i)


def test_return_sizes_are_measured_on_one_call_in_sixteen(traced) -> None:  # type: ignore[no-untyped-def]
    from callspan.tracer.keys import RET_SIZE_EVERY

    run = traced(max_spans_per_trace=100_000, max_spans_per_second=100_000)
    run.run(many_sized, 2 * RET_SIZE_EVERY + 1)
    nodes = sorted(by_name(run.sink.closed, "sized_result"), key=lambda n: n.start_ns)
    sizes = {i: n.attributes["callspan.return.size"] for i, n in enumerate(nodes) if "callspan.return.size" in n.attributes}
    assert sizes == {i: sys.getsizeof("x" * i) for i in (0, RET_SIZE_EVERY, 2 * RET_SIZE_EVERY)}
    assert all("callspan.return.hash" in n.attributes for n in nodes)


def test_return_size_off_exports_no_size_and_keeps_the_keys(traced) -> None:  # type: ignore[no-untyped-def]
    from callspan.tracer.keys import RET_SIZE_EVERY

    run = traced(max_spans_per_trace=100_000, max_spans_per_second=100_000, return_size=False)
    run.run(many_sized, 2 * RET_SIZE_EVERY + 1)
    nodes = by_name(run.sink.closed, "sized_result")
    assert len(nodes) == 2 * RET_SIZE_EVERY + 1
    assert not any("callspan.return.size" in n.attributes for n in nodes)
    assert all("callspan.return.hash" in n.attributes for n in nodes)


class UserHashed:
    """Its __hash__, __eq__ and __sizeof__ are the program's own code: callspan calls none."""

    calls: list[str] = []

    def __hash__(self) -> int:
        UserHashed.calls.append("__hash__")
        raise SystemExit(9)

    def __eq__(self, other: object) -> bool:
        UserHashed.calls.append("__eq__")
        return self is other

    def __sizeof__(self) -> int:
        UserHashed.calls.append("__sizeof__")
        return 1


def keyed_with(value: object, n: int = 0) -> object:
    return value


def with_user_types(n: int) -> None:
    for i in range(n):
        keyed_with(UserHashed(), i)        # a user type among plain ones
        keyed_with((1, (2, UserHashed())))  # inside a tuple
        keyed_with([UserHashed()])          # inside a list (would be fingerprinted)
        keyed_with(i, i)                    # plain: keyed


def test_the_hook_runs_no_user_hash_eq_or_sizeof_and_counts_what_it_skips(traced) -> None:  # type: ignore[no-untyped-def]
    # CALLSPAN_USER_HASH=off (production mode's default).
    UserHashed.calls.clear()
    run = traced(max_spans_per_trace=100_000, max_spans_per_second=100_000, user_hash="off")
    run.run(with_user_types, 20)
    assert UserHashed.calls == []
    nodes = sorted(by_name(run.sink.closed, "keyed_with"), key=lambda n: n.start_ns)
    assert len(nodes) == 80
    names = [n.attributes.get("callspan.args.unhashable") for n in nodes[:4]]
    assert names == ["UserHashed:user-hash", "tuple:user-hash", "value:list", None]
    assert ["callspan.args.hash" in n.attributes for n in nodes[:4]] == [False, False, False, True]
    # Return values of user types are neither hashed nor sized.
    assert not any("callspan.return.hash" in n.attributes for n in nodes[:3])
    assert not any("callspan.return.size" in n.attributes for n in nodes[:3])
    (window,) = run.sink.windows
    row = window["function.name"].index(f"{__name__}.keyed_with")
    function_id = window["function.id"][row]
    cache_row = window["cache.function"].index(function_id)
    # Every call with a user type is counted as not keyed, with its type named.
    assert window["cache.unhashable_calls"][cache_row] == 60
    assert set(window["cache.unhashable_types"][cache_row].split(",")) == {
        "UserHashed:user-hash", "tuple:user-hash", "value:list"}


@dataclasses.dataclass(frozen=True)
class Point:  # a value type: its __hash__ is generated Python code
    x: int
    y: int


def distance(p: Point) -> float:
    return (p.x ** 2 + p.y ** 2) ** 0.5


def with_value_types(n: int) -> None:
    for i in range(n):
        distance(Point(i % 3, 1))
        keyed_with(UserHashed(), i)


class HashesThroughTracedCode:
    """A value type whose __hash__ calls a traced function (leaf)."""

    hashes = 0

    def __hash__(self) -> int:
        HashesThroughTracedCode.hashes += 1
        return leaf(1)


def with_hashes_through_traced_code(n: int) -> None:
    for i in range(n):
        keyed_with(HashesThroughTracedCode(), i)


def test_a_user_hash_run_by_the_hook_is_not_traced(traced) -> None:  # type: ignore[no-untyped-def]
    # CALLSPAN_USER_HASH=on: the __hash__ runs inside the hook, which does not trace what it runs:
    # neither the __hash__ nor the traced function it calls becomes a span or a counted call.
    HashesThroughTracedCode.hashes = 0
    run = traced(max_spans_per_trace=100_000, max_spans_per_second=100_000)
    run.run(with_hashes_through_traced_code, 5)
    assert HashesThroughTracedCode.hashes >= 5  # the hook did hash the argument
    assert len(by_name(run.sink.closed, "keyed_with")) == 5
    assert by_name(run.sink.closed, "leaf") == []
    assert by_name(run.sink.closed, "HashesThroughTracedCode.__hash__") == []
    calls: dict[str, int] = {}
    for window in run.sink.windows:
        for name, count in zip(window["function.name"], window["function.calls"], strict=True):
            calls[name] = calls.get(name, 0) + count
    assert set(calls) == {f"{__name__}.{name}" for name in ("with_hashes_through_traced_code", "keyed_with")}
    assert all("callspan.args.hash" in n.attributes for n in by_name(run.sink.closed, "keyed_with"))


def test_user_hashes_run_as_lru_cache_would_and_never_end_the_program(traced) -> None:  # type: ignore[no-untyped-def]
    # CALLSPAN_USER_HASH=on (the default of callspan run): value types key by their own __hash__;
    # a __hash__ raising SystemExit(9) is swallowed (the call is not keyed), never ends the program.
    UserHashed.calls.clear()
    run = traced(max_spans_per_trace=100_000, max_spans_per_second=100_000)
    run.run(with_value_types, 9)
    assert UserHashed.calls.count("__hash__") >= 1 and "__eq__" not in UserHashed.calls
    nodes = sorted(by_name(run.sink.closed, "distance"), key=lambda n: n.start_ns)
    keys = [n.attributes["callspan.args.hash"] for n in nodes]
    assert len(keys) == 9 and len(set(keys)) == 3 and keys[0] == keys[3] == keys[6]
    assert all("callspan.args.hash" not in n.attributes for n in by_name(run.sink.closed, "keyed_with"))
