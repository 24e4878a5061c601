"""Cache figures through the whole pipeline (tracer -> file -> analyzer) equal a real
functools.lru_cache at every size, on every core, at default settings."""

from __future__ import annotations

import functools
import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from callspan.tracer.cores.select import available_cores

PROGRAM = textwrap.dedent("""
    import random, sys

    def price(k):
        total = 0
        for i in range(60):  # a few us: worth keying (CALLSPAN_KEY_MIN_NS)
            total += (k * i) % 7
        return total

    def main(seq):
        for k in seq:
            price(k)

    rng = random.Random(int(sys.argv[1]))
    main([int(rng.paretovariate(1.2)) % 300 for _ in range(int(sys.argv[2]))])
""")


def price(k: int) -> int:
    total = 0
    for i in range(60):
        total += (k * i) % 7
    return total


def lru_hits(seq: list[int], size: int | None) -> int:
    cached = functools.lru_cache(maxsize=size)(price)
    for k in seq:
        cached(k)
    return cached.cache_info().hits


def cache_report(tmp_path: Path, script: str, *args: str, env: dict[str, str] | None = None,
                 analyze_args: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """``callspan run`` then ``callspan analyze --report cache`` in ``tmp_path``, as a user runs
    them (subprocesses, default settings besides ``env``): the opportunities by function."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "CALLSPAN_"))}
    full_env.update(env or {})
    run = subprocess.run([sys.executable, "-m", "callspan", "run", "-o", "t.jsonl", script, *args],
                         cwd=tmp_path, env=full_env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    analyze = subprocess.run([sys.executable, "-m", "callspan", "analyze", "--format", "json", "--report", "cache",
                              "--no-progress", *analyze_args, "t.jsonl"], cwd=tmp_path, capture_output=True,
                             text=True, timeout=300)
    assert analyze.returncode == 0, analyze.stderr
    return {op["function"]: op for op in json.loads(analyze.stdout)["cache"]["opportunities"]}


@pytest.mark.parametrize("core", available_cores())
def test_hits_at_every_size_equal_lru_cache_through_file_and_analyzer(core: str, tmp_path: Path) -> None:
    seed, calls = 5, 5000
    (tmp_path / "prog.py").write_text(PROGRAM)
    op = cache_report(tmp_path, "prog.py", str(seed), str(calls), env={"CALLSPAN_CORE": core})["__main__.price"]
    rng = random.Random(seed)
    seq = [int(rng.paretovariate(1.2)) % 300 for _ in range(calls)]
    assert op["calls"] == calls and op["source"] == "aggregates" and not op["estimated"]
    assert op["distinct_keys"] == len(set(seq))
    assert op["hits"] == lru_hits(seq, None)
    assert op["hit_ratio_at_128"] == round(lru_hits(seq, 128) / calls, 4)
    assert len(op["curve"]) >= 8
    for size, ratio in op["curve"]:
        assert ratio == round(lru_hits(seq, size) / calls, 4), size
    assert op["advice"]["kind"] == "lru_cache"
    size = op["recommended_maxsize"]
    assert op["hit_ratio_at_recommended"] == round(lru_hits(seq, size) / calls, 4)


RECURSIVE = textwrap.dedent("""
    def fib(n):
        return n if n < 2 else fib(n - 1) + fib(n - 2)

    for _ in range(3):
        fib(20)
""")


@pytest.mark.parametrize("core", available_cores())
def test_a_recursive_function_is_sized_on_its_memoized_calls(core: str, tmp_path: Path) -> None:
    (tmp_path / "fib.py").write_text(RECURSIVE)
    (op,) = cache_report(tmp_path, "fib.py", env={"CALLSPAN_CORE": core}).values()

    @functools.cache
    def fib(n: int) -> int:  # the memoized version
        return n if n < 2 else fib(n - 1) + fib(n - 2)

    for _ in range(3):
        fib(20)
    info = fib.cache_info()
    assert op["calls"] == info.hits + info.misses  # the lookups the memoized program makes
    assert op["hits"] == info.hits and op["distinct_keys"] == info.misses
    uncached = 3 * (2 * 10946 - 1)  # calls of fib(20), three times
    assert op["shadowed_calls"] == uncached - op["calls"]
    assert op["advice"]["kind"] == "lru_cache"


DEEP = textwrap.dedent("""
    def price(k):
        total = 0
        for i in range(400):
            total += (k * i) % 7
        return total

    served = [0]

    def serve(k):  # a counter: a different value each call
        served[0] += 1
        return served[0]

    def priced(k):
        serve(k)
        return price(k) + 1

    def level(n, k):
        return priced(k) if n == 0 else level(n - 1, k) + 0

    def main():
        for i in range(3000):
            wrapper(i % 20)

    def wrapper(k):
        return level(3, k)

    main()
""")


def test_calls_beyond_the_depth_cap_keep_their_cpu_cost(tmp_path: Path) -> None:
    # CALLSPAN_MAX_DEPTH=2: every price() call folds into an "(other)" node, in no node of its own;
    # its cost must still come from the function table, not read as ~0 ns a call.
    (tmp_path / "deep.py").write_text(DEEP)
    ops = cache_report(tmp_path, "deep.py", env={"CALLSPAN_MAX_DEPTH": "2"}, analyze_args=("--lookup-ns", "100"))
    op = ops["__main__.price"]
    assert op["calls"] == 3000 and op["hits"] == 3000 - 20
    assert op["own_cost"]["cpu"] > 0 and op["mean_cost"] > 1000  # ns: 400 loop iterations
    assert 0 < op["savings"]["cpu"] <= op["own_cost"]["cpu"]
    # priced() spends its time in price(): its self CPU is a poor bound of its cost, but the CPU of
    # its hits (each measured whole) is a lower bound too: its savings are not clamped to ~0.
    wrapped = ops["__main__.priced"]
    assert wrapped["calls"] == 3000 and wrapped["hits"] == 3000 - 20
    assert wrapped["mean_cost"] > 1000
    assert wrapped["savings"]["cpu"] >= 0.8 * op["savings"]["cpu"]
    # Folded, what they call is still known (the tracer kept the caller-callee pairs of folded
    # calls): price() calls nothing and is recommended; priced() calls the counter serve(), and so
    # do wrapper() and level() through it.
    assert op["advice"]["kind"] == "lru_cache" and op["advice"]["paste"] is not None
    assert ops["__main__.serve"]["advice"]["kind"] == "inconsistent"
    for name, via in (("priced", ""), ("level", " (via __main__.priced)"),
                      ("wrapper", " (via __main__.level > __main__.priced)")):
        caller = ops[f"__main__.{name}"]
        assert caller["advice"]["kind"] == "calls_impure" and caller["impure_callees"] == ["__main__.serve"], name
        assert caller["advice"]["text"].startswith(f"calls impure __main__.serve{via},"), name


CHAINS = textwrap.dedent("""
    def work(k, n=300):
        total = 0
        for i in range(n):
            total += (k * i) % 7
        return total

    def dispatch(k):  # called by api only, once per call: a one-to-one chain
        return work(k) + 1

    def api(k):
        return dispatch(k) * 2

    def twice(k):
        return k + 1

    def pair(k):  # calls twice() twice per call: not one to one
        return work(k, 200) + twice(k) + twice(k + 1)

    def narrow(k):
        return work(k, 100) + 3

    def halve(k):  # its callee sees half as many keys: not one to one
        return narrow(k // 2)

    def step(n):
        return work(n, 50) + (0 if n == 0 else descend(n - 1))

    def descend(n):  # step and descend call each other, one call each way: recursive, one to one
        return step(n) + 1

    def main():
        for i in range(2000):
            k = i % 40
            api(k)
            pair(k)
            halve(k)
        for i in range(300):
            descend(i % 12)

    main()
""")


def memoized_descend_calls() -> int:
    """The calls CHAINS' descend() makes memoized (functools.lru_cache): a hit makes no nested calls."""
    made = 0

    def descend(n: int) -> int:
        nonlocal made
        made += 1
        return cached(n)

    @functools.cache
    def cached(n: int) -> int:
        return (0 if n == 0 else descend(n - 1)) + 1

    for i in range(300):
        descend(i % 12)
    return made


def test_one_to_one_call_chains_are_one_row_naming_the_functions_they_cover(tmp_path: Path) -> None:
    (tmp_path / "chains.py").write_text(CHAINS)
    ops = cache_report(tmp_path, "chains.py", analyze_args=("--lookup-ns", "100"))
    api, dispatch = ops["__main__.api"], ops["__main__.dispatch"]
    # api's row covers dispatch: every dispatch call made by api, once per call, same keys and
    # hits at every size. dispatch has no row of its own: it is listed at api's rank, after it.
    assert (api["calls"], api["distinct_keys"], api["hits"]) == (dispatch["calls"], dispatch["distinct_keys"],
                                                                 dispatch["hits"]) == (2000, 40, 1960)
    assert api["covers"] == ["__main__.dispatch"] and api["covered_by"] is None
    assert dispatch["covered_by"] == "__main__.api" and dispatch["covers"] == []
    assert dispatch["tier"] == api["tier"] == "recommended" and dispatch["tier_rank"] == api["tier_rank"]
    assert dispatch["rank"] == api["rank"] + 1
    # Not one to one: work is called by api's chain, pair and narrow; twice twice per pair call;
    # narrow with half of halve's keys.
    assert ops["__main__.pair"]["calls"] * 2 == ops["__main__.twice"]["calls"] == 4000
    assert ops["__main__.halve"]["distinct_keys"] == 2 * ops["__main__.narrow"]["distinct_keys"] == 40
    for name in ("work", "pair", "twice", "halve", "narrow"):
        assert ops[f"__main__.{name}"]["covers"] == [] and ops[f"__main__.{name}"]["covered_by"] is None, name
    # Recursive (mutually), one call each way: descend's row covers step (as many calls left out
    # as nested in hits of the same key).
    descend, step = ops["__main__.descend"], ops["__main__.step"]
    assert descend["shadowed_calls"] == step["shadowed_calls"] > 0
    assert (descend["calls"], descend["distinct_keys"]) == (step["calls"], step["distinct_keys"]) == (
        memoized_descend_calls(), 12)
    assert descend["covers"] == ["__main__.step"] and step["covered_by"] == "__main__.descend"
    # Every other row moves up one place per covered function above it: tier ranks stay 1..N over rows.
    rows = sorted(op["tier_rank"] for op in ops.values() if op["tier"] == "recommended" and not op["covered_by"])
    assert rows == list(range(1, len(rows) + 1))
