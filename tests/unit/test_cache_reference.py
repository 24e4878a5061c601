"""The exact cache reference (tests/cache_reference.py) itself."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

from tests.cache_reference import impure_reach, run_program


def test_an_argument_unhashable_even_after_conversion_gives_an_unkeyed_call_not_a_crash(tmp_path: Path) -> None:
    # dict -> frozenset(items) fails when a value is a list: the call has no key (as lru_cache
    # would raise), and the hook must not raise into the program.
    program = tmp_path / "prog.py"
    program.write_text(textwrap.dedent("""
        def size(options):
            return len(options)

        def total(values):
            return sum(values)

        for _ in range(3):
            size({"a": [1, 2]})
            total([1, 2])
        print("done")
    """))
    saved_argv, saved_path = sys.argv[:], sys.path[:]
    try:
        truths = run_program(str(program), [], ["__main__"])
    finally:
        sys.argv[:], sys.path[:] = saved_argv, saved_path
    size = truths["__main__.size"]
    assert (size.calls, size.unkeyable_calls, size.unhashable_calls, size.keys) == (3, 3, 0, [])
    total = truths["__main__.total"]
    assert (total.calls, total.unhashable_calls, total.unhashable_args, total.hits_at(None)) == (3, 3, ["values"], 2)


def test_a_closure_returning_different_values_is_no_impurity_for_its_callers(tmp_path: Path) -> None:
    # Two getters made by one factory: one code object, keyed alike, returning what each captured.
    program = tmp_path / "prog.py"
    program.write_text(textwrap.dedent("""
        COUNT = [0]

        def make(value):
            def getter(k):
                return value + k
            return getter

        def tick(k):
            COUNT[0] += 1
            return COUNT[0]

        first, second = make(10), make(20)

        def reads(k):
            return first(k) + second(k) - first(k)

        def counts(k):
            tick(k)
            return k

        for _ in range(3):
            reads(1)
            counts(1)
    """))
    truths = run_program(str(program), [], ["__main__"])
    getter = truths["__main__.make.<locals>.getter"]
    assert getter.verdict == "inconsistent" and getter.inconsistent_keys == 1  # the merged closures differ
    reach = impure_reach(truths)
    assert "__main__.reads" not in reach  # not a side effect
    assert reach["__main__.counts"] == {"__main__.tick"}  # a counter is
