"""The compiled hot path (callspan.tracer._hotpath) against its Python reference, piece by piece.

The behaviour tests (test_core, test_builder, ...) already run against the compiled core and
builder through the ``core`` and ``builder`` fixtures; these check the parts they cannot see
exactly: hash functions, fingerprints, the interval clock, layouts, faults.
"""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callspan import _env
from callspan.tracer import keys, record
from callspan.tracer.counters import IntervalThreadClock, ThreadTimeCounter, native_reader
from callspan.tracer.keys import KeyHasher, siphash24_py

# Where CI requires the extension (scripts/test.sh), a missing one fails here instead of skipping.
if os.environ.get("CALLSPAN_REQUIRE_EXTENSION") == "1":
    from callspan.tracer import _hotpath as hotpath
else:
    hotpath = pytest.importorskip("callspan.tracer._hotpath")

KEY = (0x0706050403020100, 0x0F0E0D0C0B0A0908)
MESSAGE = 0x0706050403020100


def test_extension_is_built_where_ci_requires_it() -> None:
    if os.environ.get("CALLSPAN_REQUIRE_EXTENSION") == "1":
        assert _env.HAS_COMPILED_HASH
        assert _env.HAS_COMPILED_HOTPATH


def test_siphash24_matches_the_reference_vector() -> None:
    # SipHash paper / reference vectors.h: key 00..0f, message 00..07 -> 62 24 93 9a 79 f5 f5 93.
    expected = bytes.fromhex("6224939a79f5f593")
    assert hotpath.siphash24(*KEY, MESSAGE).to_bytes(8, "little") == expected
    assert siphash24_py(*KEY, MESSAGE).to_bytes(8, "little") == expected


@given(st.integers(min_value=0, max_value=2**64 - 1), st.integers(min_value=0, max_value=2**64 - 1),
       st.integers(min_value=-(2**63), max_value=2**64 - 1))
def test_siphash24_compiled_equals_python(k0: int, k1: int, message: int) -> None:
    assert hotpath.siphash24(k0, k1, message) == siphash24_py(k0, k1, message & (2**64 - 1))


def test_keyed_digest_is_secret_dependent_and_stable() -> None:
    a, b = KeyHasher(bytes(32)), KeyHasher(bytes(31) + b"\1")
    assert a.keyed(42) == KeyHasher(bytes(32)).keyed(42)
    assert a.keyed(42) != b.keyed(42)
    assert len(a.keyed(-1)) == 16 and a.keyed(-1) == a.keyed(2**64 - 1)  # raw hashes are taken mod 2**64


hashable = st.one_of(st.integers(), st.text(max_size=4), st.none(), st.booleans(), st.floats(allow_nan=False))
flat = st.one_of(hashable, st.lists(hashable, max_size=6), st.dictionaries(st.text(max_size=3), hashable, max_size=6),
                 st.sets(st.integers(), max_size=6), st.binary(max_size=4).map(bytearray),
                 st.tuples(hashable, st.lists(hashable, max_size=2)))
nested = st.one_of(flat, st.lists(flat, max_size=6), st.dictionaries(st.text(max_size=3), flat, max_size=6))


@settings(max_examples=300)
@given(st.one_of(nested, st.tuples(nested), st.lists(nested, max_size=8).map(tuple)))
def test_fingerprint_compiled_equals_python(value: Any) -> None:
    assert hotpath.fingerprint(value) == keys.fingerprint(value, [16])
    key = value if type(value) is tuple else (value,)
    if any(type(v).__hash__ is None for v in key):
        assert hotpath.unhashable_args(key) == keys.unhashable_args(key)
        names = tuple(f"p{i}" for i in range(len(key) // 2))
        assert hotpath.unhashable_args(key, names, "rest") == keys.unhashable_args(key, names, "rest")


def test_fingerprint_budget_and_nested_containers() -> None:
    assert hotpath.fingerprint(([1, 2], {"a": 1})) == hash((False, (hash((True, (1, 2))), hash(("dict", frozenset({"a": 1}.items()))))))
    assert hotpath.fingerprint(({"a": [1]},)) is None  # a nested container is not walked
    assert hotpath.fingerprint((list(range(16)),)) is None  # 1 + 16 elements: over the budget of 16
    assert hotpath.unhashable_args(([1], {2: 3}, [4])) == (hotpath.fingerprint(([1], {2: 3}, [4])), "?:list,?:dict")


def test_unhashable_arguments_are_named_by_parameter_varargs_and_keyword() -> None:
    mark = keys._KWD_MARK[0]
    key = ([1], 2, {3: 4}, [5], mark, "opts", {6}, "extra", [7])
    want = "xs:list,table:dict,*rest:list,opts:set,extra:list"
    assert keys.unhashable_args(key, ("xs", "n", "table"), "rest")[1] == want
    assert hotpath.unhashable_args(key, ("xs", "n", "table"), "rest", mark)[1] == want
    assert hotpath.unhashable_args(([1], [2]), ("a", "b"))[1] == "a:list,b:list"


def replay_python(interval: int, walls: list[int], reals: list[int]) -> list[int]:
    wall_iter, real_iter = iter(walls), iter(reals)
    clock = IntervalThreadClock(interval, wall=wall_iter.__next__, cpu=real_iter.__next__)
    return [clock() for _ in walls]


def test_interval_clock_exact_example() -> None:
    # Real reads at wall 0 (cpu 100), 25 (cpu 110: off-CPU meanwhile; never backwards), 45.
    walls = [0, 5, 12, 25, 30, 45]
    reals = [100, 110, 140]
    expected = [100, 105, 112, 112, 117, 140]
    assert replay_python(20, walls, reals) == expected
    assert hotpath.interval_clock_replay(20, walls, reals) == expected


@given(st.integers(min_value=1, max_value=50), st.lists(st.integers(min_value=0, max_value=40), min_size=1, max_size=40),
       st.lists(st.integers(min_value=0, max_value=40), min_size=40, max_size=40))
def test_interval_clock_compiled_equals_python(interval: int, steps: list[int], real_steps: list[int]) -> None:
    walls = [sum(steps[: i + 1]) for i in range(len(steps))]
    reals = [sum(real_steps[: i + 1]) for i in range(len(real_steps))]
    python = replay_python(interval, walls, reals)
    assert hotpath.interval_clock_replay(interval, walls, reals) == python
    assert python == sorted(python)  # never backwards


def test_native_readers_are_recognised() -> None:
    assert native_reader(time.thread_time_ns) == -2
    assert native_reader(ThreadTimeCounter(20_000).thread_reader()) == -3
    assert native_reader(IntervalThreadClock(5, wall=lambda: 0)) == -1  # injected clocks are called
    assert native_reader(lambda: 0) == -1


def test_layouts_match() -> None:
    assert hotpath.RECORD_SIZE == record.RECORD_SIZE
    assert hotpath.R_OUT == record.R_OUT and hotpath.R_VIA_TASK == record.R_VIA_TASK
    assert hotpath.R_NODE == record.R_NODE and hotpath.R_KEEP == record.R_KEEP
    assert not hasattr(hotpath, "process_records") and not hasattr(hotpath, "Summary")  # no compiled builder
    assert hotpath.UNKEYABLE_AFTER == keys.UNKEYABLE_AFTER and hotpath.RET_SIZE_EVERY == keys.RET_SIZE_EVERY
    from callspan.tracer.recorder import ThreadState
    from callspan.tracer.selection import CodeInfo

    # The Python classes the hot path reads are the C structs' subclasses, with their fields.
    info = CodeInfo(test_layouts_match.__code__, __name__, keys=True)
    assert isinstance(info, hotpath.CodeInfoBase) and info.keys is True and info.kind == 0
    assert info.arg_names == () and info.varargs is None and info.code is test_layouts_match.__code__
    state = ThreadState(None)
    assert isinstance(state, hotpath.ThreadStateBase) and state.stack == [] and state.cpu_fd == -1


needs_sysmon = pytest.mark.skipif(not (_env.HAS_COMPILED_HOTPATH and _env.HAS_SYS_MONITORING),
                                  reason="sys.monitoring core needs 3.12+")


def double(x: int) -> int:
    return 2 * x


@needs_sysmon
def test_compiled_core_counts_faults_instead_of_raising(traced) -> None:  # type: ignore[no-untyped-def]
    run = traced()
    if run.session.core.name != "csysmon":
        pytest.skip("compiled core only")
    recorder = run.session.recorder
    from callspan.tracer.selection import CodeInfo

    broken = CodeInfo(double.__code__, __name__, keys=True)
    broken.arg_names = None  # type: ignore[assignment]
    recorder.infos[double.__code__] = broken
    assert run.run(lambda: [double(i) for i in range(3)]) == [0, 2, 4]
    assert recorder.faults >= 3
    assert run.sink.named(".double") == []


@needs_sysmon
@pytest.mark.parametrize("interval_us", [0, 20])
def test_compiled_core_reads_thread_cpu_natively(interval_us: int) -> None:
    from callspan.config import Settings
    from callspan.tracer.session import Session
    from tests.conftest import TESTS_DIR, RecordingSink

    sink = RecordingSink()
    session = Session(Settings(core="csysmon", cpu="thread", cpu_interval_us=interval_us), sink,
                      default_roots=(TESTS_DIR,), background=False)
    assert session.facts.cpu_interval_ns == interval_us * 1000
    session.start()
    spin(20_000)
    session.stop()
    (outer,) = sink.named(".spin")
    inners = sink.named(".spin_step")
    assert len(inners) == 20
    total = outer.attributes["callspan.cpu.total"]
    assert total > 0
    assert outer.attributes["callspan.cpu.self"] == total - sum(n.attributes["callspan.cpu.total"] for n in inners)
    assert all(n.attributes["callspan.cpu.total"] >= 0 for n in inners)


def spin_step(n: int) -> int:
    return sum(range(n))


def spin(n: int) -> int:
    total = 0
    for _ in range(20):
        total += spin_step(n)
    return total


def test_fingerprints_never_call_a_user_hash() -> None:
    class Interrupting:
        def __hash__(self) -> int:
            raise KeyboardInterrupt

    keys.set_user_hash(False)  # CALLSPAN_USER_HASH=off (a session sets it at start)
    for value in (([Interrupting()],), ({"k": Interrupting()},), Interrupting(), ((1, Interrupting()),)):
        assert hotpath.fingerprint(value) is None
        assert keys.fingerprint(value, [16]) is None  # the Python reference: the same
    assert hotpath.fingerprint(([1],)) == keys.fingerprint(([1],), [16]) is not None


def test_with_user_hashes_on_only_keyboard_interrupt_leaves_a_fingerprint() -> None:
    class Exiting:
        def __hash__(self) -> int:
            raise SystemExit(9)

    class Interrupting:
        def __hash__(self) -> int:
            raise KeyboardInterrupt

    keys.set_user_hash(True)
    try:
        for value in (([Exiting()],), ({"k": Exiting()},), ((1, Exiting()),)):
            assert keys.fingerprint(value, [16]) is None  # swallowed: the call is just not keyed
            assert hotpath.fingerprint(value) is None
        with pytest.raises(KeyboardInterrupt):
            keys.fingerprint(([Interrupting()],), [16])
    finally:
        keys.set_user_hash(False)


def compiled_session(**settings: Any) -> Any:
    from callspan.config import Settings
    from callspan.tracer.session import Session
    from tests.conftest import TESTS_DIR, RecordingSink

    core = "csysmon" if _env.HAS_SYS_MONITORING else "csetprofile"
    return Session(Settings(core=core, **settings), RecordingSink(), default_roots=(TESTS_DIR,), background=False)


def test_compiled_records_are_compact_untracked_and_indexable_like_list_records() -> None:
    import gc

    session = compiled_session()
    session.start()
    assert double(3) == 6
    records = session.recorder.drain()
    session.stop()
    (rec,) = [r for r in records if r[record.R_INFO].code is double.__code__]
    assert type(rec) is hotpath.Record and not gc.is_tracked(rec)
    assert len(rec) == record.RECORD_SIZE and len(list(rec)) == record.RECORD_SIZE
    assert rec[record.R_END] >= rec[record.R_START] > 0 and rec[record.R_SUSPENDS] == 0
    assert rec[record.R_PARENT] is None and rec[record.R_ERROR] is None and rec[record.R_INCOMPLETE] is False
    assert rec[record.R_ARGS][0] == hash(3) and rec[record.R_RET][0] == hash(6)
    assert rec[record.R_KEEP] == 1  # a root: its trace keeps 1 span
    assert rec[-1] == rec[record.R_SHADOW] == record.ACTIVE  # a keyed call, not recursive: no lookup
    assert isinstance(rec[record.R_NODE], int) and rec[record.R_NODE] > 1  # under the thread's root node
    with pytest.raises(TypeError):
        rec[record.R_NODE] = 1
    rec[record.R_END] = 7
    rec[record.R_OUT] = "builder state"
    assert rec[record.R_END] == 7 and rec[record.R_OUT] == "builder state"
    with pytest.raises(TypeError):
        rec[record.R_END] = "not an int"
    with pytest.raises(TypeError):
        del rec[record.R_OUT]
    with pytest.raises(IndexError):
        rec[record.RECORD_SIZE]


def deep(n: int) -> int:
    return 0 if n == 0 else deep(n - 1) + 1


def test_a_deep_chain_of_records_is_freed_without_deep_c_recursion() -> None:
    import sys

    depth = 300_000  # freed recursively, this chain would overflow the C stack
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(depth + 1000)
    try:
        session = compiled_session(max_pending=depth + 1, max_spans_per_trace=depth + 1)
        session.start()
        assert deep(depth) == depth
        records = session.recorder.drain()
        session.stop()
    finally:
        sys.setrecursionlimit(limit)
    assert len(records) == depth + 1 and records[0][record.R_PARENT] is records[1]
    del records  # the last reference to the innermost record: the whole chain goes with it


def sig_positional(a, b=2):  # type: ignore[no-untyped-def]
    return a


def sig_varargs(a, *rest):  # type: ignore[no-untyped-def]
    return a


def sig_kwonly(a, *, k=1, j=2):  # type: ignore[no-untyped-def]
    return a


def sig_everything(a, *rest, k=1, **extra):  # type: ignore[no-untyped-def]
    return a


def sig_many(a, b, c, d, e, f, g, h, i, j, k, m, n, o, p, q, r):  # type: ignore[no-untyped-def]
    return a


_values = st.one_of(st.integers(), st.text(max_size=3), st.floats(allow_nan=False), st.none(),
                    st.tuples(st.integers()), st.lists(st.integers(), max_size=2))


@settings(max_examples=60, deadline=None)
@given(st.lists(_values, min_size=17, max_size=17), st.dictionaries(st.sampled_from(["x", "y"]), _values))
def test_compiled_args_keys_equal_the_python_reference(values: list[Any], extra: dict[str, Any]) -> None:
    import inspect

    from callspan.tracer.selection import CodeInfo

    calls = [(sig_positional, values[:1]), (sig_positional, values[:2]), (sig_varargs, values[:4]),
             (sig_kwonly, values[:1], {"k": values[1]}), (sig_everything, values[:3], {"k": values[3], **extra}),
             (sig_many, values)]
    session = compiled_session(cpu="off")
    session.start()
    for call in calls:
        function, args, kwargs = (*call, {}) if len(call) == 2 else call  # type: ignore[misc]
        function(*args, **kwargs)
    records = session.recorder.drain()
    session.stop()
    assert len(records) == len(calls)
    for rec, call in zip(records, calls, strict=True):
        function, args, kwargs = (*call, {}) if len(call) == 2 else call  # type: ignore[misc]
        bound = inspect.signature(function).bind(*args, **kwargs)
        bound.apply_defaults()
        frame_locals = dict(bound.arguments)
        expected = keys.args_key(CodeInfo(function.__code__, __name__, True),
                                 type("Frame", (), {"f_locals": frame_locals})())  # type: ignore[arg-type]
        assert tuple(rec[record.R_ARGS]) == expected
