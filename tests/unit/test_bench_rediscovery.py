"""The rediscovery benchmark's harness (benchmarks/bench_rediscovery.py): scanning a package for
memoized functions, turning their memoization off, and scoring an analysis against the reference,
on a tiny generated library."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve the module's annotations through sys.modules
    spec.loader.exec_module(module)
    return module


bench = _load("bench_rediscovery", REPO / "benchmarks" / "bench_rediscovery.py")

FAKE_INIT = '''\
import functools
from functools import cache, cached_property, lru_cache

from .own import memoize


@functools.lru_cache(maxsize=32)
def parse(text):
    return text.split()


@lru_cache
def width(text):
    return len(text)


def plain(x):
    return x


@functools.cache
@staticmethod
def stacked(x):
    return x


class Palette:
    @classmethod
    @lru_cache(maxsize=8)
    def match(cls, colour):
        return hash(colour)

    @cached_property
    def names(self):
        return []

    class Inner:
        @memoize
        def deep(self):
            return 1


def outer():
    @cache
    def inner(y):
        return y
    return inner(1)


try:
    from ._speedups import fast
except ImportError:
    @memoize
    def fast(x):
        return x
'''

FAKE_OWN = '''\
def memoize(function):
    return function


def other(function):
    return function


@other
def not_memoized():
    return 0
'''


@pytest.fixture
def fake_package(tmp_path: Path) -> Path:
    package = tmp_path / "fakelib"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text(FAKE_INIT)
    (package / "own.py").write_text(FAKE_OWN)
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "py2.py").write_text("print 'not Python 3'\n")  # skipped, not an error
    return package


def test_scan_finds_exactly_the_memoized_functions_by_qualname_and_first_line(fake_package: Path) -> None:
    found = bench.scan_package(fake_package, "fakelib", ("lru_cache", "cache", "memoize"))
    init = str(fake_package / "__init__.py")
    assert [(m.function, m.file, m.line, m.decorator) for m in found] == [
        ("fakelib.Palette.Inner.deep", init, 38, "memoize"),
        ("fakelib.Palette.match", init, 28, "lru_cache"),
        ("fakelib.fast", init, 53, "memoize"),
        ("fakelib.outer.<locals>.inner", init, 44, "cache"),
        ("fakelib.parse", init, 7, "lru_cache"),
        ("fakelib.stacked", init, 21, "cache"),
        ("fakelib.width", init, 12, "lru_cache"),
    ]
    # each line is the code object's co_firstlineno (the first decorator), as cProfile keys it
    sys.path.insert(0, str(fake_package.parent))
    try:
        import fakelib  # type: ignore[import-not-found]
        assert fakelib.parse.__wrapped__.__code__.co_firstlineno == 7
        assert fakelib.Palette.match.__wrapped__.__code__.co_firstlineno == 28  # @classmethod's line
    finally:
        sys.path.remove(str(fake_package.parent))
        for name in [n for n in sys.modules if n == "fakelib" or n.startswith("fakelib.")]:
            del sys.modules[name]


def test_memo_off_uncaches_only_the_named_packages(fake_package: Path) -> None:
    probe = textwrap.dedent(f"""
        import functools, sys
        sys.path[:0] = [{str(REPO / "benchmarks" / "workloads")!r}, {str(fake_package.parent)!r}]
        from memo_off import disable_functools_caches
        disable_functools_caches("fakelib")
        import fakelib

        @functools.lru_cache(maxsize=4)
        def elsewhere(x):
            return x

        assert type(fakelib.parse).__name__ == "function", fakelib.parse
        assert type(fakelib.width).__name__ == "function", fakelib.width
        assert type(fakelib.Palette.__dict__["match"].__func__).__name__ == "function"
        fakelib.parse.cache_clear()  # code that clears the caches keeps working
        assert fakelib.parse.cache_info().hits == 0
        assert type(elsewhere).__name__ == "_lru_cache_wrapper"  # __main__ is not fakelib
        try:
            disable_functools_caches("fakelib")
        except RuntimeError as already:
            print(already)
    """)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "memo_off: fakelib already imported; its caches are on"


def _memo(function: str, line: int = 1) -> Any:
    return bench.Memoized(function, "/lib/fakelib/__init__.py", line, "lru_cache")


def _opportunity(rank: int, function: str, kind: str, tier_rank: int | None = None) -> dict[str, Any]:
    return {"rank": rank, "tier_rank": rank if tier_rank is None else tier_rank, "function": function,
            "advice": {"kind": kind, "text": f"{kind} text"}, "calls": 100, "hits": 90}


def _truth(verdict: str, calls: int = 100, hits: int = 90) -> dict[str, Any]:
    return {"calls": calls, "hits": hits, "verdict": verdict}


def test_savings_match_cost_rows_by_file_first_line_and_name() -> None:
    memos = [_memo("fakelib.parse", 8), _memo("fakelib.Palette.match", 28), _memo("fakelib.width", 13)]
    row = {"ns": 9000, "nested": 2, "mean_ns": 1800.0, "hit_ns": 7000, "hit_nested": 1}
    cost_file = {"wrapper_ns": 900.0, "functions": [
        {"file": "/lib/fakelib/__init__.py", "line": 8, "name": "parse", "calls": 4, "hits": 3, "saved_ns": 6100.0,
         **row},
        {"file": "/lib/fakelib/__init__.py", "line": 28, "name": "match", "calls": 0, "hits": 0, "saved_ns": 0.0,
         **row},  # never called
        {"file": "/lib/fakelib/__init__.py", "line": 14, "name": "width", "calls": 1, "hits": 0, "saved_ns": 0.0,
         **row}]}  # another line
    assert bench.savings_of(cost_file, memos) == {"fakelib.parse": bench.Saving(6100.0, 3)}
    assert bench.Saving(6100.0, 3).per_hit_ns == 6100.0 / 3 and bench.Saving(0.0, 0).per_hit_ns == 0.0


def test_least_savings_keep_each_functions_least_saving_over_the_runs() -> None:
    runs = [{"a": bench.Saving(300.0, 3), "b": bench.Saving(50.0, 1)}, {"a": bench.Saving(200.0, 3)},
            {"a": bench.Saving(250.0, 3), "b": bench.Saving(70.0, 1), "c": bench.Saving(9.0, 1)}]
    assert bench.least_savings(runs) == {"a": bench.Saving(200.0, 3), "b": bench.Saving(50.0, 1),
                                         "c": bench.Saving(9.0, 1)}


COST_LIB = """\
import functools
import time

from .own import memoize


@functools.lru_cache(maxsize=None)
def leaf(x):
    return x + 1 if isinstance(x, int) else len(x)


@functools.lru_cache
def branch(x):
    time.sleep(0.05)  # waiting, not CPU
    return leaf(x) + leaf(x + 1) + leaf([x])  # a list: no key


@memoize
def countdown(n):
    return 0 if n == 0 else countdown(n - 1)


def unmemoized(x):
    return leaf(x)
"""

COST_SCRIPT = """\
import json, sys
sys.path[:0] = [{workloads!r}, {lib!r}]
from memo_off import disable_functools_caches, replace_after_import
disable_functools_caches("costlib")
replace_after_import("costlib.own", "memoize")
import costlib
results = [costlib.branch(i % 2) for i in range(3)] + [costlib.countdown(4), costlib.countdown(2),
                                                      costlib.unmemoized(7)]
print(json.dumps([results, hasattr(costlib.countdown, "__wrapped__"), hasattr(costlib.leaf, "__wrapped__")]))
"""


def test_cost_mode_times_outermost_calls_where_the_caches_were(tmp_path: Path) -> None:
    package = tmp_path / "costlib"
    package.mkdir()
    (package / "__init__.py").write_text(COST_LIB)
    (package / "own.py").write_text("def memoize(function):\n    return function\n")
    script = tmp_path / "run.py"
    script.write_text(COST_SCRIPT.format(workloads=str(REPO / "benchmarks" / "workloads"), lib=str(tmp_path)))
    out = tmp_path / "costs.json"
    # Outside cost mode the functions are bare (nothing wrapped, nothing written).
    plain = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.strip() == "[[4, 6, 4, 0, 0, 8], false, false]"
    timed = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                           env={**os.environ, bench.COST_ENV: str(out)})
    assert timed.returncode == 0, timed.stderr
    assert timed.stdout.strip() == "[[4, 6, 4, 0, 0, 8], true, true]"  # same results, now wrapped
    written = json.loads(out.read_text())
    rows = {row["name"]: row for row in written["functions"]}
    # Outermost calls, and the wrapped calls nested in them (recursion included): exact.
    assert {name: (row["calls"], row["nested"]) for name, row in rows.items()} == {
        "leaf": (10, 0), "branch": (3, 9), "countdown": (2, 6)}
    # Hits of an unbounded cache of each function alone, lru_cache's keys: leaf(1), leaf(0),
    # leaf(1) (leaf([x]) has none); branch(0) once; countdown(2) once, its nested countdown(1)
    # and countdown(0) would not run (not keyed), but leaf's calls inside branch's hit count.
    assert {name: (row["hits"], row["hit_nested"]) for name, row in rows.items()} == {
        "leaf": (3, 0), "branch": (1, 3), "countdown": (1, 2)}
    # Keyed as the scan names them (file, first decorator line, name): the library's own
    # decorator (replaced after its module was imported) too.
    memoized = bench.scan_package(package, "costlib", ("lru_cache", "memoize"))
    savings = bench.savings_of(written, memoized)
    assert sorted(savings) == ["costlib.branch", "costlib.countdown", "costlib.leaf"]
    # The wrappers' own costs are taken out: those nested in a call, and the call's own clock reads.
    wrapper_ns, self_ns = written["wrapper_ns"], written["self_ns"]
    assert wrapper_ns > self_ns > 0
    for name, row in rows.items():
        mean = max(row["ns"] - row["nested"] * wrapper_ns - row["calls"] * self_ns, 0.0) / row["calls"]
        assert row["mean_ns"] == mean, name
        assert row["saved_ns"] == max(row["hit_ns"] - row["hit_nested"] * wrapper_ns - row["hits"] * self_ns, 0.0)
        assert savings[f"costlib.{name}"] == bench.Saving(row["saved_ns"], row["hits"])
    # CPU time: the 50 ms of sleep in branch()'s hit are not in what it saves.
    assert rows["branch"]["hit_ns"] < 50_000_000 / 5


def test_score_counts_recall_and_precision_and_says_why_functions_were_missed() -> None:
    memoized = [_memo(f"fakelib.{name}") for name in (
        "found", "low_rank", "judged_cheap", "unlisted", "too_cheap", "small", "fresh", "never_called", "unique",
        "converted", "caveat_found", "no_cost_hits")]
    report = {
        "options": {"min_cost_ratio": 2.0, "min_saved_ns": 1_000_000.0}, "lookup_ns": 100.0,
        "opportunities": [
            _opportunity(1, "fakelib.found", "lru_cache"),
            _opportunity(2, "fakelib.helper", "calls_impure"),  # not memoized, consistent
            _opportunity(3, "fakelib.counter", "mostly_consistent"),  # reference: inconsistent
            _opportunity(4, "fakelib.listy", "lru_cache"),  # reference: unhashable, bare lru_cache
            _opportunity(5, "fakelib.converted", "lru_cache_convert_args"),  # reference: unhashable
            _opportunity(6, "fakelib.unseen", "lru_cache"),  # not in the reference: not judged
            _opportunity(7, "fakelib.judged_cheap", "not_worth_it"),
            _opportunity(8, "fakelib.low_rank", "lru_cache"),
            _opportunity(9, "fakelib.late_impure", "lru_cache"),  # outside the top, inconsistent
            # ranked 10th overall, but 3rd in its own tier's table: in the top 7
            _opportunity(10, "fakelib.caveat_found", "calls_impure", tier_rank=3),
        ]}
    truths = {
        "fakelib.found": _truth("consistent"), "fakelib.low_rank": _truth("consistent"),
        "fakelib.judged_cheap": _truth("consistent"), "fakelib.unlisted": _truth("consistent"),
        "fakelib.too_cheap": _truth("consistent"), "fakelib.small": _truth("consistent", hits=5),
        "fakelib.fresh": _truth("fresh"), "fakelib.never_called": _truth("consistent", calls=0, hits=0),
        "fakelib.unique": _truth("consistent", hits=0), "fakelib.converted": _truth("unhashable"),
        "fakelib.helper": _truth("consistent"), "fakelib.counter": _truth("inconsistent"),
        "fakelib.listy": _truth("unhashable"), "fakelib.late_impure": _truth("inconsistent"),
        "fakelib.caveat_found": _truth("consistent"), "fakelib.no_cost_hits": _truth("consistent"),
    }
    savings = {name: bench.Saving(90 * 50_000.0, 90) for name in truths} | {
        "fakelib.too_cheap": bench.Saving(90 * 150.0, 90),  # 150 < 2 x 100 ns
        "fakelib.small": bench.Saving(5 * 50_000.0, 5), "fakelib.no_cost_hits": bench.Saving(0.0, 0)}
    result = bench.score(memoized, report, truths, savings, top=7)

    rows = {r.function.removeprefix("fakelib."): r for r in result.functions}
    assert {name for name, r in rows.items() if r.real} == {"found", "low_rank", "judged_cheap", "unlisted",
                                                           "converted", "caveat_found"}
    assert {name: r.why_not_real for name, r in rows.items() if not r.real} == {
        "too_cheap": "cheap: 150 ns a hit < 2 x 100 ns lookup",
        "small": "small: 5 hits save 0.25 ms < 1 ms",
        "no_cost_hits": "no hits in the cost runs",
        "fresh": "reference: fresh",
        "never_called": "not called",
        "unique": "reference: no repeats",
    }
    assert {name: r.why_missed for name, r in rows.items() if r.real and not r.found} == {
        "low_rank": "ranked 8 > 7 in its tier (one ranking)",
        "judged_cheap": "advice not_worth_it: not_worth_it text",
        "unlisted": "not in the cache report (no keyed calls or no repeated key)",
    }
    assert (result.memoized, result.ran, result.real, result.found) == (12, 11, 6, 3)
    assert result.recall == pytest.approx(3 / 6)
    # advised in the top 7 of their tiers: found, helper, counter, listy, converted, unseen,
    # caveat_found; unseen is not judged; consistent: found, helper, converted, caveat_found (a
    # bare lru_cache on unhashable arguments would raise)
    assert (result.advised_top, result.advised_top_in_reference, result.advised_top_consistent) == (7, 6, 4)
    assert result.precision == pytest.approx(4 / 6)
    assert result.advised_top_not_consistent == [
        "fakelib.counter (inconsistent, advice mostly_consistent)", "fakelib.listy (unhashable, advice lru_cache)"]
    # anywhere in the ranking: clean advice (the target), and caveated advice listed apart
    assert result.advised_inconsistent == ["fakelib.late_impure"]
    assert result.caveated_inconsistent == ["fakelib.counter"]
    assert not result.meets_targets


def test_targets_are_met_with_half_the_real_functions_found_and_nothing_inconsistent_advised() -> None:
    memoized = [_memo("fakelib.a"), _memo("fakelib.b")]
    report = {"options": {"min_cost_ratio": 2.0, "min_saved_ns": 1_000_000.0}, "lookup_ns": 100.0,
              "opportunities": [_opportunity(1, "fakelib.a", "lru_cache"), _opportunity(2, "fakelib.b", "inconsistent")]}
    truths = {"fakelib.a": _truth("consistent"), "fakelib.b": _truth("consistent")}
    saving = bench.Saving(90 * 50_000.0, 90)
    result = bench.score(memoized, report, truths, {"fakelib.a": saving, "fakelib.b": saving})
    assert (result.real, result.found, result.recall, result.precision) == (2, 1, 0.5, 1.0)
    assert result.meets_targets


def test_the_truths_lookup_cost_can_be_the_least_measured_rather_than_the_analysis() -> None:
    memoized = [_memo("fakelib.a")]
    report = {"options": {"min_cost_ratio": 2.0, "min_saved_ns": 1_000_000.0}, "lookup_ns": 300.0,
              "opportunities": [_opportunity(1, "fakelib.a", "lru_cache")]}
    truths = {"fakelib.a": _truth("consistent", hits=5000)}
    savings = {"fakelib.a": bench.Saving(5000 * 500.0, 5000)}  # 500 ns a hit, 2.5 ms
    (row,) = bench.score(memoized, report, truths, savings).functions
    assert row.why_not_real == "cheap: 500 ns a hit < 2 x 300 ns lookup"
    (row,) = bench.score(memoized, report, truths, savings, lookup_ns=120.0).functions
    assert row.real and row.found
