"""`callspan run` as a user runs it: a subprocess, a real script, the local OTLP JSON file."""

from __future__ import annotations

import base64
import http.server
import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

from callspan.tracer.cores.select import available_cores

SCRIPT = textwrap.dedent('''
    import sys

    def square(x):
        return x * x

    def main(argv):
        print("args", argv[1:])
        print("total", sum(square(int(a)) for a in argv[1:]))
        print("to stderr", file=sys.stderr)
        import __main__
        print("main is me", __main__.__file__ == __file__ and __name__ == "__main__")
        return int(argv[1])

    if __name__ == "__main__":
        sys.exit(main(sys.argv))
''')


def run(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "CALLSPAN_"))}
    full_env.update(env or {})
    return subprocess.run([sys.executable, *args], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


def read_spans(path: Path) -> list[dict]:  # type: ignore[type-arg]
    return [s for line in path.read_text().splitlines() for rs in json.loads(line)["resourceSpans"]
            for ss in rs["scopeSpans"] for s in ss["spans"] if s["name"] != "callspan.profile"]


def test_program_behaviour_is_preserved(tmp_path: Path) -> None:
    script = tmp_path / "prog.py"
    script.write_text(SCRIPT)
    plain = run(str(script), "3", "4", cwd=tmp_path)
    traced = run("-m", "callspan", "run", "-o", "t.jsonl", str(script), "3", "4", cwd=tmp_path)
    assert plain.returncode == traced.returncode == 3
    assert plain.stdout == traced.stdout
    assert "total 25" in traced.stdout and "main is me True" in traced.stdout
    assert traced.stderr.startswith("to stderr\n")
    assert traced.stderr.strip().splitlines()[-1] == "callspan: 5 spans written to t.jsonl"  # 4 calls + the profile
    names = sorted(s["name"] for s in read_spans(tmp_path / "t.jsonl"))
    assert names == ["__main__.main", "__main__.main.<locals>.<genexpr>", "__main__.square", "__main__.square"]


def test_module_mode_traces_the_package(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "util.py").write_text("def double(x):\n    return 2 * x\n")
    (package / "__main__.py").write_text(
        "import sys\nfrom pkg.util import double\nprint(double(int(sys.argv[1])))\n"
    )
    result = run("-m", "callspan", "run", "-o", "m.jsonl", "-m", "pkg", "21", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "42\n"
    assert [s["name"] for s in read_spans(tmp_path / "m.jsonl")] == ["pkg.util.double"]


RECURSE = textwrap.dedent('''
    import sys

    def depth(n=1):
        try:
            return depth(n + 1)
        except RecursionError:
            return n

    print(sys.getrecursionlimit(), depth())
    sys.setrecursionlimit(200)
    print(sys.getrecursionlimit(), depth())
''')


@pytest.mark.parametrize("core", [c for c in available_cores() if c.startswith("c")])
def test_the_recursion_limit_is_reached_at_pythons_depth(core: str, tmp_path: Path) -> None:
    """callspan's own frames under the program's module (the console script's, main()'s; with
    ``python -m callspan`` runpy's too) do not count against the limit (the compiled cores: a
    hook written in Python runs as frames of its own)."""
    package = tmp_path / "recurse"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(RECURSE)
    (tmp_path / "recurse.py").write_text(RECURSE)
    console_script = Path(sys.executable).with_name("callspan")
    for target in (["recurse.py"], ["-m", "recurse"]):
        plain = run(*target, cwd=tmp_path)
        assert plain.returncode == 0, plain.stderr
        for launcher in ([str(console_script)], [sys.executable, "-m", "callspan"]):
            traced = subprocess.run([*launcher, "run", "--core", core, "-o", "r.jsonl", *target], cwd=tmp_path,
                                    capture_output=True, text=True, timeout=60)
            assert traced.returncode == 0, traced.stderr
            assert traced.stdout == plain.stdout, (target, launcher)


def test_program_exception_exits_1_with_its_own_traceback(tmp_path: Path) -> None:
    script = tmp_path / "boom.py"
    script.write_text("def f():\n    raise ValueError('boom')\n\nf()\n")
    plain = run(str(script), cwd=tmp_path)
    traced = run("-m", "callspan", "run", "-o", "b.jsonl", str(script), cwd=tmp_path)
    assert plain.returncode == traced.returncode == 1
    assert "ValueError: boom" in traced.stderr
    assert "callspan/cli.py" not in traced.stderr and "runpy" not in traced.stderr
    (span,) = read_spans(tmp_path / "b.jsonl")
    assert span["status"]["code"] == 2


def test_bad_input_is_one_line_error(tmp_path: Path) -> None:
    result = run("-m", "callspan", "run", "missing.py", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == "callspan: error: missing.py: no such file\n"
    result = run("-m", "callspan", "run", "-m", "no_such_module_xyz", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr == "callspan: error: module no_such_module_xyz: not found\n"
    result = run("-m", "callspan", "run", "-o", "x.jsonl", "prog.py", cwd=tmp_path,
                 env={"CALLSPAN_CPU": "fast"})
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_core_can_be_forced_and_is_recorded(tmp_path: Path) -> None:
    script = tmp_path / "prog.py"
    script.write_text(SCRIPT)
    result = run("-m", "callspan", "run", "-o", "c.jsonl", str(script), "0", cwd=tmp_path,
                 env={"CALLSPAN_CORE": "setprofile"})
    assert result.returncode == 0, result.stderr
    line = json.loads((tmp_path / "c.jsonl").read_text().splitlines()[0])
    scope = line["resourceSpans"][0]["scopeSpans"][0]["scope"]
    attrs = {a["key"]: list(a["value"].values())[0] for a in scope["attributes"]}
    assert attrs["callspan.core"] == "setprofile"
    assert attrs["callspan.core.reason"] == "setprofile requested"
    assert attrs["process.pid"] not in ("", None)


SECRET_SCRIPT = textwrap.dedent('''
    def password():
        return "correct horse b"  # 15 characters: sys.getsizeof gives 56 bytes

    if __name__ == "__main__":
        for _ in range(3):
            password()
''')


def test_the_default_output_replaces_a_symbolic_link_and_leaves_its_target(tmp_path: Path) -> None:
    script = tmp_path / "prog.py"
    script.write_text(SECRET_SCRIPT)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (tmp_path / "callspan-traces.jsonl").symlink_to(victim)  # e.g. checked into a repository
    result = run("-m", "callspan", "run", str(script), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert victim.read_text() == "precious\n"
    output = tmp_path / "callspan-traces.jsonl"
    assert not output.is_symlink() and len(read_spans(output)) == 3
    assert result.stderr == (f"callspan: 4 spans written to callspan-traces.jsonl (was a symbolic link to {victim}: "
                             "replaced, its target left untouched)\n")


class _OtlpReceiver(http.server.BaseHTTPRequestHandler):
    """Accepts OTLP/HTTP posts; records each one's path and Authorization header."""

    posts: list[tuple[str, str | None]] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server API)
        self.rfile.read(int(self.headers["Content-Length"]))
        self.posts.append((self.path, self.headers.get("Authorization")))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")  # an empty ExportTraceServiceResponse: all accepted
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_an_otlp_url_keeps_its_query_in_place_and_shows_no_credential(tmp_path: Path) -> None:
    script = tmp_path / "prog.py"
    script.write_text(SECRET_SCRIPT)
    handler = type("Receiver", (_OtlpReceiver,), {"posts": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        host = f"127.0.0.1:{server.server_address[1]}"
        result = run("-m", "callspan", "run", "--otlp", f"http://me:pa55word@{host}/prefix/?token=s3cret",
                     "--otlp-protocol", "http/protobuf", str(script), cwd=tmp_path)
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 0, result.stderr
    assert handler.posts and set(handler.posts) == {
        ("/prefix/v1/traces?token=s3cret", "Basic " + base64.b64encode(b"me:pa55word").decode())}
    assert result.stderr == f"callspan: 4 spans written to OTLP/HTTP http://me:***@{host}/prefix/v1/traces?token=***\n"


MIN_SPAN_SCRIPT = textwrap.dedent('''
    import time

    def quick(x):
        return x + 1

    def slow(x):
        time.sleep(0.005)
        return quick(x)

    def main():
        return slow(1) + sum(quick(i) for i in range(3))

    main()
''')


def test_min_span_us_leaves_short_calls_to_the_profile_and_says_how_many(tmp_path: Path) -> None:
    script = tmp_path / "prog.py"
    script.write_text(MIN_SPAN_SCRIPT)
    result = run("-m", "callspan", "run", "--min-span-us", "1000", "-o", "t.jsonl", str(script), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # main and slow last 5 ms; quick (4 calls) and the generator expression are left out
    assert result.stderr.strip().splitlines()[-1] == (
        "callspan: 3 spans written to t.jsonl; 5 kept calls shorter than 1000 us not made spans "
        "(CALLSPAN_MIN_SPAN_US; their calls are in the profile)")
    spans = read_spans(tmp_path / "t.jsonl")
    by_name = {s["name"]: s for s in spans}
    assert sorted(by_name) == ["__main__.main", "__main__.slow"]
    assert by_name["__main__.slow"]["parentSpanId"] == by_name["__main__.main"]["spanId"]
    profile = [s for line in (tmp_path / "t.jsonl").read_text().splitlines()
               for rs in json.loads(line)["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]
               if s["name"] == "callspan.profile"]
    columns = {a["key"]: a["value"] for a in profile[0]["attributes"]}
    names = [v["stringValue"] for v in columns["callspan.profile.function.name"]["arrayValue"]["values"]]
    calls = [int(v["intValue"]) for v in columns["callspan.profile.function.calls"]["arrayValue"]["values"]]
    assert dict(zip(names, calls, strict=True))["__main__.quick"] == 4  # every call in the profile


def test_return_size_off_keeps_the_length_of_returned_secrets_in_the_process(tmp_path: Path) -> None:
    script = tmp_path / "prog.py"
    script.write_text(SECRET_SCRIPT)
    sizes = {}
    for setting in ("on", "off"):
        result = run("-m", "callspan", "run", "-o", f"{setting}.jsonl", str(script), cwd=tmp_path,
                     env={"CALLSPAN_RETURN_SIZE": setting})
        assert result.returncode == 0, result.stderr
        text = (tmp_path / f"{setting}.jsonl").read_text()
        assert "correct horse" not in text
        sizes[setting] = [int(a["value"]["intValue"]) for s in read_spans(tmp_path / f"{setting}.jsonl")
                          for a in s["attributes"] if a["key"] == "callspan.return.size"]
    assert sizes == {"on": [sys.getsizeof("correct horse b")], "off": []}  # measured on the first call of 16


def test_a_real_trace_has_no_impossible_figures(tmp_path: Path) -> None:
    script = tmp_path / "prog.py"
    script.write_text(SCRIPT)
    assert run("-m", "callspan", "run", "-o", "t.jsonl", str(script), "3", "4", cwd=tmp_path).returncode == 3
    result = run("-m", "callspan", "analyze", "t.jsonl", "--report", "all", "--format", "json", "--lookup-ns", "50",
                 cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["input"]["impossible"] == {} and doc["input"]["warnings"] == []


FORKING = textwrap.dedent('''
    import json
    import os
    import sys

    def f(i):
        return i + 1

    def child(calls, leave):
        for i in range(calls):
            f(i)
        if leave == "exit":
            sys.exit(3)
        if leave == "raise":
            raise ValueError("child failed")

    def main(pids_file):
        for i in range(3000):  # pending in the parent's aggregates when it forks
            f(i)
        children = {}
        for calls, leave in ((10, "exit"), (20, "raise"), (30, "return")):
            pid = os.fork()
            if pid == 0:
                child(calls, leave)
                return
            os.waitpid(pid, 0)
            children[pid] = calls
        with open(pids_file, "w") as out:  # pids differ from run to run: not in the compared output
            json.dump({"parent": os.getpid(), "children": children}, out)

    main(sys.argv[1])
''')


@pytest.mark.parametrize("core", available_cores())
def test_os_fork_children_are_processes_of_their_own_with_exact_counts(core: str, tmp_path: Path) -> None:
    """Plain os.fork() under `callspan run` (no --follow-children): each child exports only its
    own calls (never the parent's pending ones again), under its own pid, with no negative CPU,
    into the parent's file, and prints no line of callspan's."""
    from tests.integration.test_equivalence import callspan_command, clean_env
    from tests.integration.test_follow_children import analyze, calls_by_pid

    (tmp_path / "forking.py").write_text(FORKING)
    plain = subprocess.run([sys.executable, "forking.py", "plain-pids.json"], cwd=tmp_path, env=clean_env(),
                           capture_output=True, text=True, timeout=60)
    traced = subprocess.run([*callspan_command(), "run", "--core", core, "-o", "f.jsonl", "forking.py", "pids.json"],
                            cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=60)
    assert traced.returncode == plain.returncode == 0, traced.stderr
    assert traced.stdout == plain.stdout
    *program_stderr, ours = traced.stderr.splitlines(keepends=True)
    assert "".join(program_stderr) == plain.stderr and "ValueError: child failed" in plain.stderr
    assert ours.startswith("callspan: ") and "spans written to f.jsonl" in ours and "internal" not in ours, ours

    pids = json.loads((tmp_path / "pids.json").read_text())
    parent, children = pids["parent"], {int(pid): calls for pid, calls in pids["children"].items()}
    report = analyze(tmp_path / "f.jsonl", tmp_path)
    processes = report["input"]["processes"]
    assert sorted(p["pid"] for p in processes) == sorted([parent, *children])
    assert len({p["instance"] for p in processes}) == 4
    assert calls_by_pid(report) == {
        "__main__.f": {parent: 3000, **children},
        "__main__.child": dict.fromkeys(children, 1),
        "__main__.main": dict.fromkeys([parent, *children], 1),  # a child counts main() from the fork
    }
    stacks = {tuple(stack["stack"]): stack for stack in report["cpu"]["stacks"]}
    assert {stack: row["calls"] for stack, row in stacks.items()} == {
        ("__main__.main",): 4, ("__main__.main", "__main__.f"): 3000, ("__main__.main", "__main__.child"): 3,
        ("__main__.main", "__main__.child", "__main__.f"): 10 + 20 + 30}
    assert all(row["self"] >= 0 and row["total"] >= row["self"] for row in stacks.values())
    cpu = [int(a["value"]["intValue"]) for s in read_spans(tmp_path / "f.jsonl") for a in s["attributes"]
           if a["key"] == "callspan.cpu.total"]
    assert cpu and min(cpu) >= 0
    assert report["input"]["impossible"] == {}
