"""``python -m callspan.analysis`` as users run it: outputs, exports, bad input, Jaeger over HTTP."""

from __future__ import annotations

import contextlib
import gzip
import http.server
import io
import json
import os
import re
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from callspan.analysis.__main__ import main
from callspan.analysis.progress import Progress
from tests.analysis.otlp_fixtures import (
    SRC,
    calls_event,
    key_sequence_spans,
    lines,
    request,
    span,
    summary,
    write,
)


def run(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=SRC)
    return subprocess.run([sys.executable, "-m", "callspan.analysis", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=120, check=False)


def workload(tmp_path: Path) -> str:
    """A small service: price() repeats 4 keys, fetch() is a coroutine, handle() calls both."""
    spans: list[dict[str, Any]] = []
    ids = iter(range(1, 10_000))
    for request_no in range(40):
        t = request_no * 10_000
        root = next(ids)
        children = []
        for j in range(3):
            key = 1 + (request_no + j) % 4
            children.append(span("shop.pricing.price", next(ids), t + 100 + j * 1000, t + 600 + j * 1000,
                                 parent=root, trace=request_no + 1, args=key, ret=key * 10, cpu=2_000_000,
                                 file="/srv/shop/pricing.py", line=42))
        children.append(span("shop.io.fetch", next(ids), t + 4000, t + 9000, parent=root, trace=request_no + 1,
                             args=1 + request_no % 2, ret=5, cpu=300_000, kind="coroutine",
                             file="/srv/shop/io.py", line=7,
                             extra={"callspan.await.count": 1, "callspan.await.suspended_ns": 4000}))
        spans.extend(children)
        spans.append(span("shop.views.handle", root, t, t + 9500, trace=request_no + 1, cpu=7_000_000,
                          cpu_self=400_000, file="/srv/shop/views.py", line=3))
    return write(str(tmp_path / "traces.jsonl"), [request(spans[:100]), request(spans[100:])])


def test_default_cache_report(tmp_path: Path) -> None:
    result = run(workload(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    out = result.stdout
    assert out.startswith("200 spans from 1 source, 1 process, ")
    assert re.search(r"^\s+1 shop\.pricing\.price\s+120\s+4\s+96\.7\s+96\.7\s+4 ", out, re.M), out
    assert "@functools.lru_cache(maxsize=4)  # /srv/shop/pricing.py:42" in out
    assert "CPU by call stack" not in out
    for line in out.splitlines():
        if not line.strip().startswith("@functools"):
            assert len(line) <= 100, line


def test_all_reports_json(tmp_path: Path) -> None:
    result = run(workload(tmp_path), "--report", "all", "--format", "json", "--top", "3")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["schema"] == "callspan.analysis/1"
    assert doc["reports"] == ["cache", "cpu", "latency"]
    assert doc["input"]["spans"] == 200 and doc["input"]["processes"][0]["pid"] == 100
    op = doc["cache"]["opportunities"][0]
    for key in ("function", "file", "line", "calls", "distinct_keys", "hit_ratio", "hit_ratio_at_128",
                "recommended_maxsize", "consistent", "advice", "savings"):
        assert key in op
    assert (op["function"], op["calls"], op["distinct_keys"], op["recommended_maxsize"]) == (
        "shop.pricing.price", 120, 4, 4)
    assert op["hit_ratio"] == pytest.approx(116 / 120, abs=1e-6)
    assert op["savings"] == {"cpu": 116 * 2_000_000, "cpu_unit": "ns", "wall_ns": 116 * 500, "hits": 116,
                             "share": pytest.approx(116 * 2_000_000 / (40 * (3 * 2_000_000 + 300_000 + 400_000)))}
    assert op["advice"]["kind"] == "lru_cache"
    fetch = next(o for o in doc["cache"]["opportunities"] if o["function"] == "shop.io.fetch")
    assert fetch["advice"]["kind"] == "async_cache" and fetch["advice"]["paste"] is None
    stacks = doc["cpu"]["stacks"]
    assert stacks[0] == {"stack": ["shop.views.handle", "shop.pricing.price"], "self": 240_000_000,
                         "total": 240_000_000, "calls": 120}
    assert len(stacks) == 3  # --top 3
    lat = {f["function"]: f for f in doc["latency"]["functions"]}
    assert lat["shop.io.fetch"]["mean_suspended_ns"] == 4000 and lat["shop.io.fetch"]["awaits_per_call"] == 1
    assert lat["shop.pricing.price"]["p99_ns"] == 500
    assert doc["latency"]["slowest"][0]["stack"] == ["shop.views.handle"]


def test_html_report_is_one_self_contained_file(tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    result = run(workload(tmp_path), "--format", "html", "-o", str(out), "--report", "cache,cpu")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "shop.pricing.price" in page and "CPU by call stack" in page
    assert page.count("<svg") == 2  # one hit-ratio curve per opportunity (price and fetch)
    # Scripts inline only: the flame graph's data and its code; nothing loaded from elsewhere.
    assert page.count("<script") == 2 and not re.search(r"<script[^>]*\ssrc=", page) and "<link" not in page
    assert not re.search(r"(src|href)=[\"']?https?:", page)
    assert "rec. 4" in page  # the recommended size is marked on the curve


def test_folded_and_speedscope_exports(tmp_path: Path) -> None:
    folded = tmp_path / "out.folded"
    scope = tmp_path / "out.speedscope.json"
    result = run(workload(tmp_path), "--report", "cpu", "--folded", str(folded), "--speedscope", str(scope))
    assert result.returncode == 0, result.stderr
    assert folded.read_text().splitlines() == [
        "shop.views.handle 16000000", "shop.views.handle;shop.io.fetch 12000000",
        "shop.views.handle;shop.pricing.price 240000000"]
    doc = json.loads(scope.read_text())
    assert doc["profiles"][0]["endValue"] == 268_000_000


def test_summaries_in_the_cli(tmp_path: Path) -> None:
    root = span("m.root", 100, 0, 100, cpu=1_000_000, extra=summary(["m.g"], [6], cpu_total=[6_000_000]),
                events=[calls_event("m.g", [1, 1, 1, 2, 2, 2], [10, 20, 30, 40, 50, 60], cpu=1_000_000)])
    path = write(str(tmp_path / "t.jsonl"), [request([root])])
    doc = json.loads(run(path, "--format", "json").stdout)
    (op,) = doc["cache"]["opportunities"]
    assert (op["function"], op["calls"], op["hits"], op["recommended_maxsize"]) == ("m.g", 6, 4, 1)


@pytest.mark.parametrize("setup,message", [
    (lambda d: str(d / "missing.jsonl"), r"missing\.jsonl: no such file or directory"),
    (lambda d: _file(d, "bad.jsonl", lines([request([])]) + b"{not json\n" + lines([request([])])),
     r"bad\.jsonl:2: invalid JSON"),
    (lambda d: _file(d, "t.jsonl.gz", gzip.compress(lines([request(key_sequence_spans("m.f", [1] * 300))]))[:900]),
     r"t\.jsonl\.gz: truncated gzip file"),
    (lambda d: _file(d, "t.csv", b"a,b\n1,2\n"), r"t\.csv:1: not OTLP JSON lines or Jaeger JSON"),
    (lambda d: _file(d, "o.json", b'{"hello": "world"}\n'), r"o\.json:1: not OTLP JSON"),
    (lambda d: _file(d, "huge.jsonl", b'{"resourceSpans": [], "x": "' + b"y" * (2 << 20) + b'"}\n'),
     r"huge\.jsonl:1: line longer than 1 MiB"),
    (lambda d: _file(d, "bin.jsonl", bytes(range(256)) * 4), r"bin\.jsonl:1: not OTLP JSON lines"),
    (lambda d: str(_dir(d)), r"empty: directory holds no trace files"),
], ids=["missing", "garbage-json", "truncated-gzip", "csv", "wrong-json", "huge-line", "binary", "empty-dir"])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, setup: Any, message: str) -> None:
    path = setup(tmp_path)
    result = run(path, "--max-line-mb", "1")
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("callspan: error: ")
    assert re.search(message, result.stderr), result.stderr


def _file(d: Path, name: str, data: bytes) -> str:
    path = d / name
    path.write_bytes(data)
    return str(path)


def _dir(d: Path) -> Path:
    (d / "empty").mkdir()
    return d / "empty"


@pytest.mark.parametrize("args,message", [
    ([], "no input"), (["--jaeger", "http://localhost:1"], "--jaeger needs --service"),
    (["x.jsonl", "--report", "heat"], "--report 'heat'"), (["x.jsonl", "--target", "1.5"], "--target 1.5"),
    (["--jaeger", "localhost:16686", "--service", "s"], "expected an http"),
    (["--jaeger", "http://localhost:1", "--service", "s", "--since", "yesterday"], "--since 'yesterday'"),
])
def test_bad_options(args: list[str], message: str) -> None:
    result = run(*args)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("callspan: error: ") and message in result.stderr


def test_partial_last_line_is_a_warning_not_an_error(tmp_path: Path) -> None:
    data = lines([request(key_sequence_spans("m.f", [1, 1, 1], cpu=1_000_000))])
    path = _file(tmp_path, "t.jsonl", data + data[:50])
    result = run(path)
    assert result.returncode == 0
    assert result.stderr.startswith("callspan: warning: ") and "t.jsonl:2: skipped an incomplete last line" in \
        result.stderr
    assert "m.f" in result.stdout


def test_no_spans_is_a_warning(tmp_path: Path) -> None:
    result = run(write(str(tmp_path / "t.jsonl"), [request([])]))
    assert result.returncode == 0 and "no spans found" in result.stderr


def test_the_analyzer_imports_neither_opentelemetry_nor_the_tracer(tmp_path: Path) -> None:
    path = workload(tmp_path)
    code = (
        "import sys, json\n"
        "from callspan.analysis.__main__ import main\n"
        f"main([{path!r}, '--report', 'all', '--format', 'json', '-o', {os.devnull!r}])\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('callspan', 'opentelemetry')))))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=SRC), timeout=120, check=True)
    loaded = json.loads(result.stdout)
    assert "callspan.analysis.cache" in loaded
    assert [m for m in loaded if not m.startswith("callspan.analysis")] == [
        "callspan", "callspan.errors", "callspan.otlp_json", "callspan.outfiles", "callspan.untrusted"]


def test_analysis_sources_import_only_stdlib_and_the_analysis_package() -> None:
    import ast

    package = Path(SRC) / "callspan" / "analysis"
    # leaves of the standard library only
    allowed_callspan = {"callspan.errors", "callspan.otlp_json", "callspan.outfiles", "callspan.untrusted"}
    for source in package.glob("*.py"):
        tree = ast.parse(source.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
                if node.module == "callspan":
                    assert [a.name for a in node.names] == ["__version__"], source
                    continue
            for name in names:
                top = name.split(".")[0]
                if top == "callspan":
                    assert name.startswith("callspan.analysis") or name in allowed_callspan, (source, name)
                else:  # the standard library, plus orjson for parsing (never the tracer or the SDK)
                    assert top in sys.stdlib_module_names or top == "orjson", (source, name)


# -- Jaeger over HTTP --------------------------------------------------------------------------------

class _Jaeger(http.server.BaseHTTPRequestHandler):
    """Answers GETs from ``routes`` (path -> status, body and maybe extra headers); records the
    paths asked for (``seen``) and the Authorization header of each (``authorizations``)."""

    routes: dict[str, tuple[int, bytes] | tuple[int, bytes, dict[str, str]]] = {}
    seen: list[str] = []
    authorizations: list[str | None] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        self.seen.append(self.path)
        self.authorizations.append(self.headers.get("Authorization"))
        status, body, *headers = self.routes.get(urllib.parse.urlsplit(self.path).path, (404, b'{"error": "nope"}'))
        self.send_response(status)
        for key, value in {"Content-Type": "application/json", **(headers[0] if headers else {})}.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def jaeger_server() -> Iterator[tuple[str, type[_Jaeger]]]:
    """A ``_Jaeger`` HTTP server on 127.0.0.1 (a free port): its URL and handler class."""
    handler = type("Handler", (_Jaeger,), {"routes": {}, "seen": [], "authorizations": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def jaeger() -> Iterator[tuple[str, type[_Jaeger]]]:
    with jaeger_server() as served:
        yield served


def _traces() -> dict[str, Any]:
    return request(key_sequence_spans("m.f", [1, 1, 2, 1], cpu=1_000_000))


def test_jaeger_v3(jaeger: tuple[str, type[_Jaeger]]) -> None:
    url, handler = jaeger
    handler.routes["/api/v3/traces"] = (200, json.dumps({"result": _traces()}).encode())
    out = io.StringIO()
    sys_stdout, sys.stdout = sys.stdout, out
    try:
        code = main(["--jaeger", url + "/", "--service", "shop", "--since", "30m", "--limit", "50",
                     "--format", "json"])
    finally:
        sys.stdout = sys_stdout
    assert code == 0
    doc = json.loads(out.getvalue())
    assert doc["cache"]["opportunities"][0]["calls"] == 4
    (path,) = handler.seen
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)
    assert query["query.service_name"] == ["shop"] and query["query.num_traces"] == ["50"]
    start = datetime.fromisoformat(query["query.start_time_min"][0].replace("Z", "+00:00"))
    end = datetime.fromisoformat(query["query.start_time_max"][0].replace("Z", "+00:00"))
    assert (end - start).total_seconds() == pytest.approx(1800, abs=1)
    assert doc["input"]["sources"][0].startswith(url + "/api/v3/traces?")


def test_jaeger_falls_back_to_v1(jaeger: tuple[str, type[_Jaeger]], tmp_path: Path) -> None:
    url, handler = jaeger
    from tests.analysis.test_readers import jaeger_trace

    handler.routes["/api/traces"] = (200, json.dumps({"data": [jaeger_trace()]}).encode())
    result = run("--jaeger", url, "--service", "svc", "--format", "json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["input"]["spans"] == 3
    assert [urllib.parse.urlsplit(p).path for p in handler.seen] == ["/api/v3/traces", "/api/traces"]
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(handler.seen[1]).query)
    assert query["service"] == ["svc"] and int(query["end"][0]) - int(query["start"][0]) == 3600 * 10**6


def test_jaeger_errors(jaeger: tuple[str, type[_Jaeger]]) -> None:
    url, handler = jaeger
    handler.routes["/api/v3/traces"] = (500, b"storage down")
    result = run("--jaeger", url, "--service", "svc")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "HTTP 500" in result.stderr and "storage down" not in result.stderr  # no response body shown
    result = run("--jaeger", "http://127.0.0.1:9", "--service", "svc")
    assert result.returncode == 2 and result.stderr.startswith("callspan: error: cannot reach Jaeger at")


# -- progress ----------------------------------------------------------------------------------------

class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_only_on_a_tty_and_after_a_second() -> None:
    now = [0.0]
    tty = _Tty()
    progress = Progress(1000, stream=tty, clock=lambda: now[0])
    progress.update(100, 10)
    assert tty.getvalue() == ""  # not before 1 s
    now[0] = 1.5
    progress.update(500, 50)
    text = tty.getvalue()
    assert text.startswith("\r") and "50%" in text and "50 spans" in text and len(text) <= 81
    progress.finish()
    assert tty.getvalue().endswith("\r")
    pipe = io.StringIO()
    quiet = Progress(1000, stream=pipe, clock=lambda: now[0] + 5)
    quiet.update(500, 50)
    quiet.finish()
    assert pipe.getvalue() == ""


def test_the_progress_line_is_escaped_like_every_output() -> None:
    tty = _Tty()
    progress = Progress(1000, stream=tty, delay=0)
    progress.set_phase("x\x1b[2J", 500, 50)  # callspan's own words today; escaped all the same
    assert "\x1b" not in tty.getvalue() and "callspan: x\\x1b[2J" in tty.getvalue()


def test_no_progress_output_when_stderr_is_not_a_tty(tmp_path: Path) -> None:
    result = run(workload(tmp_path), "--report", "all")
    assert result.returncode == 0 and "\r" not in result.stderr


def test_worker_processes_give_the_same_report(tmp_path: Path) -> None:
    path = workload(tmp_path)
    # The cache hit's cost is measured in each run (it varies a little): fixed here to compare.
    one = run(path, "--report", "all", "--format", "json", "--jobs", "1", "--lookup-ns", "100")
    two = run(path, "--report", "all", "--format", "json", "--jobs", "2", "--lookup-ns", "100")
    assert one.returncode == two.returncode == 0
    assert json.loads(one.stdout) == json.loads(two.stdout)
    assert json.loads(two.stdout)["cache"]["opportunities"]


def test_the_parser_default_line_limit_is_the_readers() -> None:
    from callspan.analysis.cli import DEFAULT_MAX_LINE_MB
    from callspan.analysis.readers import MAX_LINE_BYTES

    assert DEFAULT_MAX_LINE_MB == MAX_LINE_BYTES >> 20
