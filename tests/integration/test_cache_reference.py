"""The whole pipeline (tracer -> file -> analyzer, default settings, every core) against the
exact reference (tests/cache_reference.py) on generated programs (issue 11 item 6).

Each program is generated from a seed: functions of several shapes (positional, keyword-only,
``*args``, ``**kwargs``, unhashable list arguments, a few or many inconsistent keys, new objects
each call, callers of impure functions, calls that raise, memoizable recursion) called by a
driver with skewed random arguments. The reference runs the same program; for every function
the report must give the reference's calls, distinct keys, hits (unbounded, at 128 and at every
point of the curve), inconsistent and fresh keys, unhashable arguments by name, impure callees,
and the verdict its advice kind stands for.

Async programs (``generate_async``) do the same for coroutine functions gathered in batches:
besides the figures above, the calls that started while an identical call was in flight, and
advice that is never ``lru_cache`` (an async cache, or coalescing when calls overlapped).
"""

from __future__ import annotations

import random
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from callspan.tracer.cores.select import available_cores
from tests.cache_reference import FunctionTruth, impure_reach, run_program
from tests.integration.test_cache_pipeline import cache_report

ROOT = Path(__file__).resolve().parents[2]
# ~40 loop iterations per call: a few microseconds, above CALLSPAN_KEY_MIN_NS on every core.
WORK = "    t = 0\n    for i in range(40):\n        t += (i * 7 + {seed}) % 13\n"

# Verdict -> the advice kinds that stand for it (not_worth_it: by cost, which the reference
# does not judge; every other figure must still agree).
KINDS = {
    "inconsistent": {"inconsistent", "mostly_consistent", "not_worth_it"},
    "fresh": {"fresh_object"},
    "unhashable": {"lru_cache_convert_args", "not_worth_it"},
    "consistent": {"lru_cache", "not_worth_it"},
    "consistent_calls_impure": {"calls_impure", "not_worth_it"},
    "consistent_mutable_return": {"mutable_return", "not_worth_it"},
    "async_consistent": {"async_cache", "not_worth_it"},
    "async_consistent_overlapping": {"inflight_coalescing", "not_worth_it"},
}
SKIPPED = ("__main__.main", "__main__.safely", "__main__.Box.__init__", "__main__.guarded")


def generate(seed: int) -> str:
    """A program whose functions and calls are drawn from ``seed``."""
    rng = random.Random(seed)
    defs: list[str] = [textwrap.dedent("""
        import random, sys

        class Box:  # no value equality: a new object each call
            def __init__(self, v):
                self.v = v

        COUNTER = [0]
        """)]
    calls: list[str] = []
    pure: list[str] = []
    impure: list[str] = []
    shapes = ["positional", "keyword_only", "varargs", "kwargs", "list_arg", "few_inconsistent",
              "inconsistent", "fresh", "raises", "recursive", "mutable"]
    rng.shuffle(shapes)
    shapes += ["caller", "caller"]  # last: the first calls an impure function, the second any two
    for index, shape in enumerate(shapes):
        name = f"{shape}_{index}"
        body = WORK.format(seed=index)
        domain = rng.choice((4, 9, 30, 120))
        a = f"int(rng.paretovariate(1.3)) % {domain}"
        if shape == "positional":
            defs.append(f"def {name}(a, b):\n{body}    return t + a * b\n")
            calls.append(f"{name}({a}, rng.randrange(3) - 2)")  # -2, -1, 0: CPython hashes -1 like -2
            pure.append(name)
        elif shape == "keyword_only":
            defs.append(f"def {name}(a, *, scale=1):\n{body}    return (t + a) * scale\n")
            calls.append(f"{name}({a}, scale=rng.choice((1, 2)))")
            pure.append(name)
        elif shape == "varargs":
            defs.append(f"def {name}(*xs):\n{body}    return t + sum(xs)\n")
            calls.append(f"{name}(*range({a} % 4))")
            pure.append(name)
        elif shape == "kwargs":
            defs.append(f"def {name}(a, **opts):\n{body}    return t + a + sum(opts.values())\n")
            calls.append(f"{name}({a}, x=rng.randrange(2))")
            pure.append(name)
        elif shape == "list_arg":
            defs.append(f"def {name}(items, k):\n{body}    return t + sum(items) * k\n")
            calls.append(f"{name}([{a}, 1], rng.randrange(2))")
        elif shape == "few_inconsistent":  # one key of a large domain: at most 5% of keys
            defs.append(f"def {name}(a):\n{body}    if a == 1:\n        COUNTER[0] += 1\n"
                        f"        return t + COUNTER[0]\n    return t + a\n")
            calls.append(f"{name}(int(rng.paretovariate(1.1)) % 400)")
            impure.append(name)
        elif shape == "inconsistent":
            defs.append(f"def {name}(a):\n{body}    COUNTER[0] += 1\n    return t + a + COUNTER[0] % 3\n")
            calls.append(f"{name}({a})")
            impure.append(name)
        elif shape == "fresh":
            defs.append(f"def {name}(a):\n{body}    return Box(t + a)\n")
            calls.append(f"{name}({a}).v")
        elif shape == "mutable":  # equal lists for equal keys: consistent, but a cache would share one list
            defs.append(f"def {name}(a):\n{body}    return [t, a]\n")
            calls.append(f"{name}({a})")
        elif shape == "raises":
            defs.append(f"def {name}(a):\n{body}    if a % 5 == 4:\n        raise ValueError(a)\n    return t - a\n")
            calls.append(f"safely({name}, {a})")
            pure.append(name)
        elif shape == "recursive":
            defs.append(f"def {name}(n):\n{body}    return n if n < 2 else {name}(n - 1) + {name}(n - 2)\n")
            calls.append(f"{name}(rng.randrange(4, 11))")
            pure.append(name)
        else:  # a caller: keeps pure callees' results, drops impure ones' (its own returns stay consistent)
            callees = [n for n in pure if not n.startswith(("raises", "recursive"))]
            if shapes[index - 1] != "caller":
                chosen = [rng.choice(impure), rng.choice(callees)]
            else:
                chosen = rng.sample(callees + impure, 2)
            lines = []
            for callee in chosen:
                arg = "a" if callee.startswith(("few_inconsistent", "inconsistent", "list_arg")) else "a % 3"
                call = {"keyword_only": f"{callee}({arg}, scale=2)", "varargs": f"{callee}({arg}, 1)",
                        "kwargs": f"{callee}({arg}, y=1)", "list_arg": f"{callee}([{arg}], 1)",
                        "positional": f"{callee}({arg}, 2)"}.get(callee.rsplit("_", 1)[0], f"{callee}({arg})")
                lines.append(f"    _ = {call}\n" if callee in impure else f"    t += {call}\n")
            defs.append(f"def {name}(a):\n{body}{''.join(lines)}    return t + a\n")
            calls.append(f"{name}({a})")
            pure.append(name)
    driver = ["def safely(f, a):", "    try:", "        return f(a)", "    except ValueError:", "        return None",
              "", "def main(seed, n):", "    rng = random.Random(seed)", "    for _ in range(n):",
              f"        which = rng.randrange({len(calls)})"]
    for i, call in enumerate(calls):
        driver.append(f"        {'if' if i == 0 else 'elif'} which == {i}:")
        driver.append(f"            {call}")
    driver += ["", "main(int(sys.argv[1]), int(sys.argv[2]))", ""]
    return "\n".join(defs) + "\n" + "\n".join(driver)


def generate_async(seed: int) -> str:
    """An asyncio program from ``seed``: coroutine functions awaited in gathered batches (so
    identical calls overlap) and one at a time."""
    rng = random.Random(seed)
    defs = ["import asyncio, random, sys\n\nCOUNTER = [0]\n"]
    picks: list[str] = []
    shapes = ["gathered", "keyword_only", "inconsistent", "raises", "no_await", "varargs"]
    rng.shuffle(shapes)
    for index, shape in enumerate(shapes):
        name = f"{shape}_{index}"
        body = WORK.format(seed=index).replace("range(40)", "range(400)")  # worth caching: > 1 ms saved
        domain = rng.choice((3, 6, 20))
        a = f"int(rng.paretovariate(1.3)) % {domain}"
        if shape == "gathered":
            defs.append(f"async def {name}(a, b):\n    await asyncio.sleep(0)\n{body}    return t + a * b\n")
            picks.append(f"{name}({a}, rng.randrange(3) - 2)")
        elif shape == "keyword_only":
            defs.append(f"async def {name}(a, *, scale=1):\n{body}    await asyncio.sleep(0)\n"
                        f"    return (t + a) * scale\n")
            picks.append(f"{name}({a}, scale=rng.choice((1, 2)))")
        elif shape == "varargs":
            defs.append(f"async def {name}(*xs):\n    await asyncio.sleep(0)\n{body}"
                        f"    await asyncio.sleep(0)\n    return t + sum(xs)\n")
            picks.append(f"{name}(*range({a} % 4))")
        elif shape == "inconsistent":
            defs.append(f"async def {name}(a):\n    await asyncio.sleep(0)\n{body}    COUNTER[0] += 1\n"
                        f"    return t + a + COUNTER[0] % 3\n")
            picks.append(f"{name}({a})")
        elif shape == "raises":
            defs.append(f"async def {name}(a):\n    await asyncio.sleep(0)\n{body}    if a % 5 == 4:\n"
                        f"        raise ValueError(a)\n    return t - a\n")
            picks.append(f"guarded({name}({a}))")
        else:  # never suspends: awaited alone, its calls never overlap
            defs.append(f"async def {name}(a):\n{body}    return t + a\n")
            defs.append(f"ALONE = {name}\n")
    driver = ["async def guarded(coroutine):", "    try:", "        return await coroutine",
              "    except ValueError:", "        return None", "",
              "async def main(seed, n):", "    rng = random.Random(seed)", "    for _ in range(n):",
              "        batch = []", "        for _ in range(rng.randrange(1, 7)):",
              f"            which = rng.randrange({len(picks)})"]
    for i, pick in enumerate(picks):
        driver.append(f"            {'if' if i == 0 else 'elif'} which == {i}:")
        driver.append(f"                batch.append({pick})")
    driver += ["        await asyncio.gather(*batch)", "        await ALONE(int(rng.paretovariate(1.3)) % 5)", "",
               "asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))", ""]
    return "\n".join(defs) + "\n" + "\n".join(driver)


def verdict(truth: FunctionTruth, reach: dict[str, set[str]]) -> str:
    v = truth.verdict
    if truth.coroutine and v == "consistent":
        return "async_consistent_overlapping" if truth.overlapping else "async_consistent"
    if v == "consistent" and truth.name.startswith("__main__.mutable_"):
        return "consistent_mutable_return"  # the reference compares by value; the advice warns of sharing
    return "consistent_calls_impure" if v == "consistent" and truth.name in reach else v


def run_pipeline(tmp_path: Path, core: str, seed: int, calls: int) -> dict[str, dict[str, Any]]:
    return cache_report(tmp_path, "prog.py", str(seed), str(calls), env={"CALLSPAN_CORE": core})


def compare(truths: dict[str, FunctionTruth], ops: dict[str, dict[str, Any]]) -> list[str]:
    """Every difference between the report and the reference (empty: they agree exactly)."""
    reach = impure_reach(truths)
    out: list[str] = []
    for name, truth in sorted(truths.items()):
        if name in SKIPPED:
            continue  # the drivers, and identity-keyed self
        op = ops.get(name)
        if truth.hits_at(None) == 0:
            if op is not None:
                out.append(f"{name}: reported with hits {op['hits']}, the reference has none")
            continue
        if op is None:
            out.append(f"{name}: missing from the report (reference: {truth.hits_at(None)} hits)")
            continue
        calls = truth.calls + truth.errors
        facts = {"calls": (op["calls"], calls), "errors": (op["errors"], truth.errors),
                 "distinct_keys": (op["distinct_keys"], truth.distinct_keys), "hits": (op["hits"], truth.hits_at(None)),
                 "hits_at_128": (round(op["hit_ratio_at_128"] * calls), truth.hits_at(128)),
                 "inconsistent_keys": (op["inconsistent_keys"], truth.inconsistent_keys),
                 "fresh_keys": (op["fresh_keys"], truth.fresh_keys),
                 "shadowed_calls": (op["shadowed_calls"], truth.shadowed_calls),
                 "unhashable_args": (sorted(a["argument"] for a in op["unhashable_args"]), sorted(truth.unhashable_args)),
                 "impure_callees": (sorted(op["impure_callees"]), sorted(reach.get(name, ()))),
                 "estimated": (op["estimated"], truth.shadowed_calls > 0),
                 "curve_exact_from": (op["curve_exact_from"], truth.distinct_keys if truth.shadowed_calls else None),
                 "overlapping_calls": (op["overlapping_calls"], truth.overlapping)}
        for size, ratio in op["curve"]:
            # A recursive function's curve is exact from its distinct keys up (below: estimated, and
            # said so); the reference runs a real lru_cache of that size through the program's calls.
            if not truth.shadowed_calls or size >= truth.distinct_keys:
                facts[f"hits_at_{size}"] = (round(ratio * calls), truth.hits_at(size))
        out += [f"{name}: {what} {got} != reference {want}" for what, (got, want) in facts.items() if got != want]
        want_verdict = verdict(truth, reach)
        if op["advice"]["kind"] not in KINDS[want_verdict]:
            out.append(f"{name}: advice {op['advice']['kind']} for reference verdict {want_verdict}")
        if op["advice"]["kind"] == "mostly_consistent" and truth.inconsistent_keys > 0.05 * truth.distinct_keys:
            out.append(f"{name}: mostly_consistent with {truth.inconsistent_keys} of {truth.distinct_keys} keys")
    return out


def reference_and_report(source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, core: str, seed: int,
                         count: int) -> tuple[dict[str, FunctionTruth], dict[str, dict[str, Any]]]:
    """The program ``source`` (argv: seed, count) run under the reference, then through callspan."""
    program = tmp_path / "prog.py"
    program.write_text(source)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    monkeypatch.setattr(sys, "path", list(sys.path))
    truths = run_program(str(program), [str(seed), str(count)], ["__main__"])
    return truths, run_pipeline(tmp_path, core, seed, count)


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("core", available_cores())
def test_generated_programs_agree_exactly_with_the_reference(core: str, seed: int, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    truths, ops = reference_and_report(generate(seed), tmp_path, monkeypatch, core, seed, 3000)
    assert compare(truths, ops) == []
    # The programs cover every verdict (a generator change must not quietly drop one).
    reach = impure_reach(truths)
    assert {verdict(t, reach) for t in truths.values() if t.hits_at(None)} >= {
        "inconsistent", "fresh", "unhashable", "consistent", "consistent_calls_impure"}


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("core", available_cores())
def test_generated_async_programs_agree_exactly_with_the_reference(core: str, seed: int, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    truths, ops = reference_and_report(generate_async(seed), tmp_path, monkeypatch, core, seed, 400)
    assert compare(truths, ops) == []
    coroutines = {name: t for name, t in truths.items() if t.coroutine and name not in SKIPPED}
    assert len(coroutines) == 6 and all(t.calls + t.errors for t in coroutines.values())
    # every coroutine verdict is covered, and no coroutine is ever advised lru_cache
    assert {verdict(t, {}) for t in coroutines.values()} >= {
        "async_consistent", "async_consistent_overlapping", "inconsistent"}
    kinds = {ops[name]["advice"]["kind"] for name in coroutines if name in ops}
    assert {"async_cache", "inflight_coalescing", "inconsistent"} <= kinds
    assert not [kind for kind in kinds if kind.startswith("lru")]


def test_the_comparison_fails_when_a_figure_differs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The comparison itself can fail: change one figure of a real report and it is found."""
    truths, ops = reference_and_report(generate(1), tmp_path, monkeypatch, available_cores()[0], 1, 600)
    assert compare(truths, ops) == []
    name = next(n for n, op in ops.items() if op["hits"] > 1)
    ops[name] = {**ops[name], "hits": ops[name]["hits"] - 1}
    assert compare(truths, ops) == [f"{name}: hits {ops[name]['hits']} != reference {ops[name]['hits'] + 1}"]
