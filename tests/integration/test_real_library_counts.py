"""Real code traced whole, counted exactly against a slow reference.

``realcode/asyncio_workers.py`` does the same for the standard library's asyncio traced whole
(queues, workers cancelled, gather with errors, a task group, a timeout).

``realcode/stdlib_and_django.py`` runs code callspan's authors did not write (the standard
library's pure-Python TOML, decimal, diff, text-wrapping and e-mail code, and Django's template
engine; one part in a second thread), with those libraries ``--include``d whole. The reference
(``tests/call_reference.py``: ``sys.setprofile``, nothing shared with callspan) runs the same
program. On every core, the analyzer's calls per function and calls per call stack (read from
the file ``callspan run`` wrote) must equal the reference's: ~11,700 calls of ~420 functions on
~1,100 distinct stacks. Stacks through a generator are compared by their calls per function only:
where a resumed generator's callees hang depends on who resumes it (callspan keeps them under
the generator's first caller, a live stack under whoever resumes it); direct recursion is
folded as the tracer documents it (a function calling itself stays in its caller's node).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from callspan.tracer.cores.select import available_cores
from tests.integration.test_cli_run import run as run_python

pytest.importorskip("django")

ROOT = Path(__file__).resolve().parents[2]
PROGRAM = Path(__file__).parent / "realcode" / "stdlib_and_django.py"
ASYNCIO_PROGRAM = Path(__file__).parent / "realcode" / "asyncio_workers.py"


def includes(program: Path = PROGRAM) -> list[str]:
    stdlib = os.path.dirname(os.__file__)
    if program == ASYNCIO_PROGRAM:
        return [os.path.join(stdlib, "asyncio")]
    import django

    return [os.path.dirname(django.__file__), *(os.path.join(stdlib, name) for name in (
        "_pydecimal.py", "tomllib", "difflib.py", "email", "textwrap.py"))]


def run(*args: str, cwd: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    done = run_python(*args, cwd=cwd, env=variables, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def reference_counts(program: Path, out: Path) -> dict[str, Any]:
    flags = [arg for path in includes(program) for arg in ("--include", path)]
    run("-m", "tests.call_reference", *flags, "--out", str(out), str(program), cwd=ROOT)
    data: dict[str, Any] = json.loads(out.read_text())
    return data


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    data = reference_counts(PROGRAM, tmp_path_factory.mktemp("reference") / "reference.json")
    assert sum(data["calls"].values()) > 10_000 and len(data["calls"]) > 300  # real work was counted
    return data


@pytest.fixture(scope="module")
def asyncio_reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    data = reference_counts(ASYNCIO_PROGRAM, tmp_path_factory.mktemp("reference") / "asyncio.json")
    assert sum(data["calls"].values()) > 2_000 and len(data["calls"]) > 80
    return data


# callspan run calls a value's own __hash__ to key it (as lru_cache would), inside the hook,
# untraced. Hashing one of Django's lazy proxies (LazyObject: the settings; Promise: lazy strings)
# runs its set-up there, so the program later never makes those calls itself: 72 of 11,725 calls
# (CPython 3.12) differ with the defaults, none with either of these (a skip pattern matches a
# type's base classes too; README, "What user code callspan calls").
USER_HASH = {"user-hash-off": {"CALLSPAN_USER_HASH": "off"},
             "lazy-skipped": {"CALLSPAN_USER_HASH_SKIP": "django.utils.functional.*"}}


@pytest.mark.parametrize("user_hash", list(USER_HASH))
@pytest.mark.parametrize("core", available_cores())
def test_calls_per_function_and_per_stack_equal_the_reference(core: str, user_hash: str, reference: dict[str, Any],
                                                              tmp_path: Path) -> None:
    assert_counts_equal(PROGRAM, core, reference, tmp_path, **USER_HASH[user_hash])


# Known, not yet explained: on CPython 3.12 only, under the two pure-Python cores (whose hooks are
# Python functions), asyncio.runners' _cancel_all_tasks finds 9 more finished tasks still alive
# and all_tasks() calls asyncio.futures._get_loop on each: 9 calls the program does not make
# under python. The compiled cores (callspan's default) and 3.11 and 3.13 are exact.
_PYTHON_HOOK_KEEPS_TASKS = pytest.mark.xfail(
    sys.version_info[:2] == (3, 12), strict=True,
    reason="3.12, pure-Python cores: 9 extra asyncio.futures._get_loop calls at Runner.close")


@pytest.mark.parametrize("core", [pytest.param(core, marks=_PYTHON_HOOK_KEEPS_TASKS) if core in ("sysmon", "setprofile")
                                  else core for core in available_cores()])
def test_asyncio_traced_whole_equals_the_reference(core: str, asyncio_reference: dict[str, Any],
                                                   tmp_path: Path) -> None:
    assert_counts_equal(ASYNCIO_PROGRAM, core, asyncio_reference, tmp_path)


def assert_counts_equal(program: Path, core: str, reference: dict[str, Any], tmp_path: Path,
                        **variables: str) -> None:
    flags = [arg for path in includes(program) for arg in ("--include", path)]
    traced = run("-m", "callspan", "run", "--core", core, *flags, "-o", "t.jsonl", str(program), cwd=tmp_path,
                 **variables)
    assert "dropped" not in traced.stderr and "not exported" not in traced.stderr, traced.stderr
    report = json.loads(run("-m", "callspan", "analyze", "--report", "cpu,latency", "--format", "json",
                            "--top", "1000000", "t.jsonl", cwd=tmp_path).stdout)

    calls = {row["function"]: row["calls"] for row in report["latency"]["functions"]}
    assert calls == reference["calls"]

    suspending = set(reference["suspending"])
    stacks: Counter[tuple[str, ...]] = Counter()
    for row in report["cpu"]["stacks"]:
        stacks[tuple(row["stack"])] += row["calls"]
    assert ("(other)",) not in stacks and not any("(other)" in stack for stack in stacks)
    expected: Counter[tuple[str, ...]] = Counter()
    for stack, n in reference["stacks"]:
        # Direct recursion folds into the caller's node (docs/span-schema.md): a, a, b -> a, b.
        expected[tuple(name for i, name in enumerate(stack) if i == 0 or stack[i - 1] != name)] += n

    def plain(counter: Counter[tuple[str, ...]]) -> dict[tuple[str, ...], int]:
        return {stack: n for stack, n in counter.items() if n and not suspending.intersection(stack)}

    assert plain(stacks) == plain(expected)
    assert sum(stacks.values()) == sum(expected.values())  # the rest: the same number of calls
