"""Every call counted on its complete stack (schema v2), through `callspan run` at default
settings: the local file and OTLP to the real Collector's file. The program is the one of the
data-path issue: a million `leaf` calls under `mid`, 300,000 `side` calls, 400 gathered
coroutines, a thread and a 100,000-deep recursion."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from callspan.tracer.cores.select import available_cores

PROGRAM = textwrap.dedent("""
    import asyncio, sys, threading

    def leaf(i):
        return i & 7

    def mid(n):
        total = 0
        for i in range(n):
            total += leaf(i)
        return total

    def side(i):
        return i + 1

    async def gathered(i):
        await asyncio.sleep(0)
        return leaf(i)

    async def gather_all():
        await asyncio.gather(*(gathered(i) for i in range(400)))

    def deep(n):
        return 0 if n == 0 else deep(n - 1) + 1

    def worker():
        mid(100)

    def main(scale):
        for _ in range(scale):
            mid(500)
        for i in range(scale * 150):
            side(i)
        asyncio.run(gather_all())
        thread = threading.Thread(target=worker, name="worker")
        thread.start()
        thread.join()
        sys.setrecursionlimit(250_000)
        threading.stack_size(512 * 1024 * 1024)
        deep_thread = threading.Thread(target=deep, args=(DEPTH,), name="deep")
        deep_thread.start()
        deep_thread.join()

    DEPTH = int(sys.argv[2])
    main(int(sys.argv[1]))
    print("done")
""")


def run_program(tmp_path: Path, core: str, scale: int, depth: int, *extra: str,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "prog.py"
    script.write_text(PROGRAM)
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "CALLSPAN_"))}
    full_env["CALLSPAN_CORE"] = core
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "callspan", "run", *extra, str(script), str(scale), str(depth)],
                          cwd=tmp_path, env=full_env, capture_output=True, text=True, timeout=600)


def profile_spans(requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [s for r in requests for rs in r.get("resourceSpans", []) for ss in rs.get("scopeSpans", [])
            for s in ss.get("spans", []) if s["name"] == "callspan.profile"]


def _value(value: dict[str, Any]) -> Any:
    if "arrayValue" in value:
        return [_value(v) for v in value["arrayValue"].get("values", [])]
    if "intValue" in value:
        return int(value["intValue"])
    if "doubleValue" in value:
        return float(value["doubleValue"])
    if "boolValue" in value:
        return value["boolValue"]
    return value.get("stringValue", "")


def merged_stacks(spans: list[dict[str, Any]]) -> tuple[dict[tuple[str, ...], int], dict[str, int]]:
    """Calls per full stack (thread name first) and per function, all windows and chunks added."""
    functions: dict[int, str] = {}
    nodes: dict[int, dict[str, Any]] = {}
    per_function: dict[str, int] = {}
    for span in spans:
        attrs = {a["key"]: _value(a["value"]) for a in span["attributes"]}
        functions.update(zip(attrs.get("callspan.profile.function.id", []),
                             attrs.get("callspan.profile.function.name", []), strict=True))
        for name, calls in zip(attrs.get("callspan.profile.function.name", []),
                               attrs.get("callspan.profile.function.calls", []), strict=True):
            per_function[name] = per_function.get(name, 0) + calls
        for node_id, parent, function, label, calls in zip(
                attrs.get("callspan.profile.node.id", []), attrs.get("callspan.profile.node.parent", []),
                attrs.get("callspan.profile.node.function", []), attrs.get("callspan.profile.node.label", []),
                attrs.get("callspan.profile.node.calls", []), strict=True):
            node = nodes.setdefault(node_id, {"parent": parent, "function": function, "label": label, "calls": 0})
            node["calls"] += calls
    stacks: dict[tuple[str, ...], int] = {}
    for node_id, node in nodes.items():
        path = []
        current = node_id
        while current:
            item = nodes[current]
            path.append(functions[item["function"]].rsplit(".", 1)[-1] if item["function"] else item["label"])
            current = item["parent"]
        if node["calls"]:
            stacks[tuple(reversed(path))] = node["calls"]
    return stacks, {name.rsplit(".", 1)[-1]: calls for name, calls in per_function.items() if calls}


def check_counts(spans: list[dict[str, Any]], scale: int, depth: int) -> None:
    stacks, per_function = merged_stacks(spans)
    assert per_function == {"main": 1, "mid": scale + 1, "leaf": scale * 500 + 100 + 400, "side": scale * 150,
                            "gather_all": 1, "gathered": 400, "<genexpr>": 1, "worker": 1, "deep": depth + 1}
    assert stacks[("MainThread", "main", "mid", "leaf")] == scale * 500
    assert stacks[("MainThread", "main", "side")] == scale * 150
    assert stacks[("MainThread", "main", "gather_all", "gathered", "leaf")] == 400
    assert stacks[("worker", "worker", "mid", "leaf")] == 100
    assert stacks[("deep", "deep")] == depth + 1  # direct recursion folds into one node


@pytest.mark.parametrize("core", available_cores())
def test_a_million_calls_at_default_settings_are_all_counted_on_their_stacks(core: str, tmp_path: Path) -> None:
    # Every core, the pure-Python reference ones included: 1,000,400 leaf calls, a 100,000-deep
    # recursion (the Python cores take ~10x the compiled ones' time).
    scale, depth = 2000, 100_000
    started = time.monotonic()
    result = run_program(tmp_path, core, scale, depth, "-o", "out.jsonl")
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert result.stdout == "done\n"
    last = result.stderr.strip().splitlines()[-1]
    assert "not built" not in last and "dropped" not in last and "not exported" not in last, last
    requests = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    check_counts(profile_spans(requests), scale, depth)
    # Spans: bounded by the per-trace budget whatever the depth or the call count.
    function_spans = [s for r in requests for rs in r["resourceSpans"] for ss in rs["scopeSpans"]
                      for s in ss["spans"] if s["name"] != "callspan.profile"]
    assert 0 < len(function_spans) <= 2000 * 4
    print(f"{core}: {elapsed:.1f} s")


def test_aggregates_reach_the_collector_file_over_grpc_and_http(otelcol: Any, tmp_path: Path) -> None:
    core = available_cores()[0]
    scale, depth = 2000, 1000  # a million calls per run
    for endpoint, protocol in ((f"http://{otelcol.grpc_endpoint}", "grpc"),
                               (otelcol.http_endpoint, "http/protobuf")):
        result = run_program(tmp_path, core, scale, depth, "--otlp", endpoint, "--otlp-protocol", protocol)
        assert result.returncode == 0, result.stderr
        assert "not exported" not in result.stderr, result.stderr
    deadline = time.monotonic() + 30
    spans: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        spans = profile_spans(otelcol.read_output())
        if len({_pid(s) for s in spans}) >= 1 and len(spans) >= 2:
            break
        time.sleep(0.3)
    time.sleep(1.0)
    requests = otelcol.read_output()
    by_process: dict[int, list[dict[str, Any]]] = {}
    for request in requests:
        for rs in request.get("resourceSpans", []):
            pid = next(int(a["value"]["intValue"]) for a in rs["resource"]["attributes"] if a["key"] == "process.pid")
            for ss in rs["scopeSpans"]:
                by_process.setdefault(pid, []).extend(s for s in ss["spans"] if s["name"] == "callspan.profile")
    assert len(by_process) == 2  # one run per protocol
    for spans in by_process.values():
        check_counts(spans, scale, depth)


def _pid(span: dict[str, Any]) -> str:
    return span["traceId"]
