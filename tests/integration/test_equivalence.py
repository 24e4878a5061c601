"""A traced program behaves exactly as under `python`: every program in equivalence/ is run as
`python PROGRAM` and as `callspan run PROGRAM` on every core of this interpreter; stdout, stderr
and the exit status must be identical, callspan's own line aside (the last line of stderr).

The programs' headers (equivalence/README.md) give arguments, stdin and the lowest Python. Both
sides run in equivalence/ and name the program as a user types it there (`prog.py`, or
`-m prog`): Python makes `__file__` and the code's paths absolute, so must callspan.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

from callspan.tracer.cores.select import available_cores

PROGRAMS_DIR = Path(__file__).parent / "equivalence"
PROGRAMS = sorted(p.name for p in PROGRAMS_DIR.iterdir() if p.suffix in (".py", ".txt"))
TIMEOUT_S = 60
_NEEDS = {"coverage_self.py": "coverage"}


class Header(NamedTuple):
    args: list[str]
    stdin: bytes
    python: tuple[int, ...]
    callspan: list[str]
    shutdown_output: bool
    differs_on: tuple[int, ...] | None
    env: dict[str, str]  # for the callspan side only, e.g. CALLSPAN_USER_HASH=off
    module: bool  # run as `-m NAME` (the file's name without .py)


def header(program: str) -> Header:
    fields: dict[str, str] = {}
    for line in (PROGRAMS_DIR / program).read_text().splitlines():
        if line.startswith("#: ") and ":" in line[3:]:
            name, _, value = line[3:].partition(":")
            fields[name.strip()] = value.strip()
    return Header(
        args=fields.get("args", "").split(),
        stdin=fields.get("stdin", "").encode().decode("unicode_escape").encode(),
        python=tuple(int(part) for part in fields.get("python", "3.11").split(".")),
        callspan=fields.get("callspan", "").split(),
        shutdown_output=fields.get("shutdown-output") == "yes",
        differs_on=tuple(int(p) for p in fields["differs-on"].split()[0].split(".")) if "differs-on" in fields else None,
        env=dict(item.split("=", 1) for item in fields.get("env", "").split()),
        module=fields.get("run") == "-m",
    )


def target(program: str) -> list[str]:
    """The program as typed in equivalence/ (the working directory of both runs)."""
    return ["-m", program.removesuffix(".py")] if header(program).module else [program]


def normalised(output: bytes) -> str:
    """Object addresses differ from run to run, under python too."""
    return re.sub(r" at 0x[0-9a-f]+", " at 0x...", output.decode())


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "CALLSPAN_", "PYTHON"))}
    env["PYTHONHASHSEED"] = "0"  # set orders and hash-dependent output the same on both sides
    return env


def callspan_command() -> list[str]:
    """The console script, as a user runs it (its directory is sys.path[0] at start-up)."""
    script = Path(sys.executable).with_name("callspan")
    return [str(script)] if script.exists() else [sys.executable, "-m", "callspan"]


def execute(command: list[str], stdin: bytes, cwd: Path,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(command, input=stdin, cwd=cwd, env={**clean_env(), **(env or {})}, capture_output=True,
                              timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{' '.join(command)} did not finish in {TIMEOUT_S}s (a deadlock?)")


@functools.cache
def under_python(program: str) -> subprocess.CompletedProcess[bytes]:
    spec = header(program)
    return execute([sys.executable, *target(program), *spec.args], spec.stdin, PROGRAMS_DIR)


def runnable(program: str) -> None:
    spec = header(program)
    if sys.version_info < spec.python:
        pytest.skip(f"{program} needs Python {'.'.join(map(str, spec.python))}+")
    needed = _NEEDS.get(program)
    if needed is not None:
        pytest.importorskip(needed, reason=f"{program} needs {needed}: pip install -e '.[test]'")


@pytest.mark.parametrize("core", available_cores())
@pytest.mark.parametrize("program", PROGRAMS)
def test_program_behaves_as_under_python(program: str, core: str, tmp_path: Path,
                                        request: pytest.FixtureRequest) -> None:
    runnable(program)
    spec = header(program)
    if spec.differs_on is not None and sys.version_info[:2] >= spec.differs_on:
        # A difference the README lists ("How `callspan run` differs"): run, expected to fail
        # (not always: it depends on timing), and shown as XPASS when it does not.
        request.applymarker(pytest.mark.xfail(reason=f"{program}: known difference (README)", strict=False))
    plain = under_python(program)
    output = tmp_path / "out.jsonl"
    traced = execute([*callspan_command(), "run", "-o", str(output), "--core", core, *spec.callspan,
                      *target(program), *spec.args], spec.stdin, PROGRAMS_DIR, spec.env)
    stderr_lines = normalised(traced.stderr).splitlines(keepends=True)
    ours = [i for i, line in enumerate(stderr_lines) if line.startswith("callspan: ")]
    assert ours, traced.stderr.decode()[-3000:]
    line = stderr_lines.pop(ours[-1])
    assert "spans written to" in line and "internal" not in line, line
    if not spec.shutdown_output:
        assert ours[-1] == len(stderr_lines), "callspan's line is not the last"
    assert traced.returncode == plain.returncode, traced.stderr.decode()[-3000:]
    assert traced.stdout == plain.stdout
    assert "".join(stderr_lines) == normalised(plain.stderr)
    # The program was traced: its spans are in the file, from this core.
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    scopes = [ss["scope"] for line in lines for rs in line["resourceSpans"] for ss in rs["scopeSpans"]]
    cores = {a["value"]["stringValue"] for s in scopes for a in s.get("attributes", ()) if a["key"] == "callspan.core"}
    assert cores == {core}
    # The program was named by a relative path: its spans' code.file.path are absolute (schema).
    paths = {a["value"]["stringValue"] for line in lines for rs in line["resourceSpans"] for ss in rs["scopeSpans"]
             for s in ss["spans"] for a in s["attributes"] if a["key"] == "code.file.path"}
    assert all(os.path.isabs(path) for path in paths), paths
