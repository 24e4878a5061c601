"""`callspan run --follow-children` as a user runs it: multiprocessing children started by fork,
forkserver and spawn (Process, Pool, ProcessPoolExecutor) are traced as processes of their own,
into the parent's file, and `callspan analyze` counts every call of each of them exactly."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from callspan.tracer.cores.select import available_cores
from tests.integration.test_equivalence import callspan_command, clean_env

FAMILY = textwrap.dedent('''
    import concurrent.futures
    import json
    import multiprocessing as mp
    import os
    import sys
    import time


    def leaf(n):
        return n + 1


    def work(calls):
        total = 0
        for i in range(calls):
            total += leaf(i)
        return total


    def work_then_wait(connection, calls):
        connection.send(work(calls))
        time.sleep(60)


    def main(method, pids_file):
        context = mp.get_context(method)
        print("parent", work(1))
        children = {}
        for calls in (3, 5):  # each leaves through multiprocessing's os._exit (fork, forkserver)
            child = context.Process(target=work, args=(calls,))
            child.start()
            child.join()
            children[child.pid] = calls
            print("child exit code", child.exitcode)
        ours, theirs = context.Pipe()
        waiting = context.Process(target=work_then_wait, args=(theirs, 7))
        waiting.start()
        print("waiting child sent", ours.recv())
        waiting.terminate()  # SIGTERM: the child dies by it, as under python
        waiting.join()
        print("terminated child exit code", waiting.exitcode)
        with context.Pool(2) as pool:  # the with-block ends the pool with terminate()
            print("pool", pool.map(leaf, range(8)))
        with concurrent.futures.ProcessPoolExecutor(2, mp_context=context) as executor:
            print("executor", list(executor.map(work, [2, 4])))
        with open(pids_file, "w") as out:  # pids differ from run to run: not in the compared output
            json.dump({"parent": os.getpid(), "children": children, "waiting": waiting.pid}, out)


    if __name__ == "__main__":
        main(sys.argv[1], sys.argv[2])
''')
METHODS = ("fork", "forkserver", "spawn")
TIMEOUT_S = 120


def execute(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=TIMEOUT_S)


def analyze(output: Path, cwd: Path) -> dict[str, Any]:
    done = execute([*callspan_command(), "analyze", "--report", "cpu,latency", "--format", "json", "--top", "1000",
                    "--no-progress", str(output)], cwd)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def calls_by_pid(report: dict[str, Any]) -> dict[str, dict[int, int]]:
    """function -> pid -> calls, from the latency report's per-process counts."""
    pids = {process["key"]: process["pid"] for process in report["input"]["processes"]}
    return {row["function"]: {pids[entry["process"]]: entry["calls"] for entry in row["calls_by_process"]}
            for row in report["latency"]["functions"]}


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("family")
    (directory / "family.py").write_text(FAMILY)
    return directory


@pytest.mark.parametrize("core", available_cores())
@pytest.mark.parametrize("method", METHODS)
def test_every_child_is_a_process_of_its_own_with_exact_counts(family: Path, method: str, core: str,
                                                                tmp_path: Path) -> None:
    script = family / "family.py"
    plain = execute([sys.executable, str(script), method, str(tmp_path / "plain-pids.json")], tmp_path)
    assert plain.returncode == 0, plain.stderr
    output = tmp_path / "out.jsonl"
    traced = execute([*callspan_command(), "run", "--follow-children", "-o", str(output), "--core", core,
                      str(script), method, str(tmp_path / "pids.json")], tmp_path)
    # The program's own output and exit status are python's; callspan's line comes last.
    assert traced.returncode == plain.returncode, traced.stderr
    assert traced.stdout == plain.stdout
    *program_stderr, ours = traced.stderr.splitlines(keepends=True)
    assert "".join(program_stderr) == plain.stderr
    assert ours.startswith("callspan: ") and "spans written to" in ours and "internal" not in ours, ours

    check_every_process(analyze(output, tmp_path), json.loads((tmp_path / "pids.json").read_text()))


@pytest.mark.parametrize("method", METHODS)
def test_children_export_over_otlp_to_the_collector(otelcol: Any, family: Path, method: str, tmp_path: Path) -> None:
    """With --otlp (gRPC) and no file, each child sends its own spans to the real Collector."""
    traced = execute([*callspan_command(), "run", "--follow-children", "--otlp", f"http://{otelcol.grpc_endpoint}",
                      str(family / "family.py"), method, str(tmp_path / "pids.json")], tmp_path)
    assert traced.returncode == 0, traced.stderr
    otelcol.stop()  # flushes its file exporter
    check_every_process(analyze(otelcol.output_file, tmp_path), json.loads((tmp_path / "pids.json").read_text()))


def check_every_process(report: dict[str, Any], pids: dict[str, Any]) -> None:
    """Each process of the family is there, with its own identity and its exact calls."""
    children = {int(pid): calls for pid, calls in pids["children"].items()}
    waiting, parent = pids["waiting"], pids["parent"]
    processes = report["input"]["processes"]
    by_pid = {process["pid"]: process for process in processes}
    assert len(by_pid) == len(processes), "two processes with one pid"
    assert len({process["instance"] for process in processes}) == len(processes), "a shared service.instance.id"
    assert set(children) | {waiting, parent} <= set(by_pid)
    assert len(processes) <= 1 + 3 + 2 + 2  # the parent, three children, the pool's and executor's workers
    assert {p["cpu_counter"] for p in processes} == {by_pid[parent]["cpu_counter"]}

    counts = calls_by_pid(report)
    assert set(counts) == {"__main__.main", "__main__.work", "__main__.leaf", "__main__.work_then_wait"}
    assert counts["__main__.main"] == {parent: 1}  # the forked children do not count their parent's call
    assert counts["__main__.work_then_wait"] == {waiting: 1}  # ended by SIGTERM, exported first
    workers = set(by_pid) - set(children) - {parent, waiting}
    for pid, calls in children.items():
        assert counts["__main__.work"][pid] == 1
        assert counts["__main__.leaf"][pid] == calls
    assert counts["__main__.work"][parent] == counts["__main__.leaf"][parent] == counts["__main__.work"][waiting] == 1
    assert counts["__main__.leaf"][waiting] == 7
    # The pool's and the executor's workers: which did what varies, the sums do not.
    assert sum(counts["__main__.work"].get(pid, 0) for pid in workers) == 2
    assert sum(counts["__main__.leaf"].get(pid, 0) for pid in workers) == 8 + 2 + 4

    # Each child's calls are under its own roots (the fork children's inherited main() dropped).
    stacks = {tuple(stack["stack"]): stack["calls"] for stack in report["cpu"]["stacks"]}
    assert stacks == {
        ("__main__.main",): 1, ("__main__.main", "__main__.work"): 1,
        ("__main__.main", "__main__.work", "__main__.leaf"): 1,
        ("__main__.work",): 2 + 2, ("__main__.work", "__main__.leaf"): 3 + 5 + 2 + 4,
        ("__main__.work_then_wait",): 1, ("__main__.work_then_wait", "__main__.work"): 1,
        ("__main__.work_then_wait", "__main__.work", "__main__.leaf"): 7,
        ("__main__.leaf",): 8,
    }


def test_without_the_flag_spawned_children_are_not_traced(family: Path, tmp_path: Path) -> None:
    output = tmp_path / "out.jsonl"
    traced = execute([*callspan_command(), "run", "-o", str(output), str(family / "family.py"), "spawn",
                      str(tmp_path / "pids.json")], tmp_path)
    assert traced.returncode == 0, traced.stderr
    report = analyze(output, tmp_path)
    assert len(report["input"]["processes"]) == 1
    assert calls_by_pid(report)["__main__.leaf"] == {report["input"]["processes"][0]["pid"]: 1}


def test_the_setting_follows_the_configuration_precedence(family: Path, tmp_path: Path) -> None:
    """CALLSPAN_FOLLOW_CHILDREN and [tool.callspan] follow-children; the argument wins."""
    (tmp_path / "pyproject.toml").write_text("[tool.callspan]\nfollow-children = true\n")
    runs = {"pyproject": [], "off by argument": ["--no-follow-children"]}
    for name, extra in runs.items():
        output = tmp_path / f"{name}.jsonl"
        done = execute([*callspan_command(), "run", *extra, "-o", str(output), str(family / "family.py"), "spawn",
                        str(tmp_path / "pids.json")], tmp_path)
        assert done.returncode == 0, done.stderr
        processes = len(analyze(output, tmp_path)["input"]["processes"])
        assert (processes > 1) == (name == "pyproject"), name
    (tmp_path / "pyproject.toml").unlink()
    output = tmp_path / "env.jsonl"
    env_run = subprocess.run([*callspan_command(), "run", "-o", str(output), str(family / "family.py"), "spawn",
                              str(tmp_path / "pids.json")], cwd=tmp_path, capture_output=True, text=True,
                             timeout=TIMEOUT_S, env={**clean_env(), "CALLSPAN_FOLLOW_CHILDREN": "on"})
    assert env_run.returncode == 0, env_run.stderr
    assert len(analyze(output, tmp_path)["input"]["processes"]) > 1
