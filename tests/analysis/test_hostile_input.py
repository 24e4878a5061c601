"""Traces, outputs and URLs from elsewhere (issue 15): terminal controls never reach the terminal,
impossible times are clamped and counted, outputs are not written through symbolic links, and
``--jaeger`` keeps to the origin given, keeps its query in place and shows no credential."""

from __future__ import annotations

import base64
import json
import re
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.analysis.otlp_fixtures import key_sequence_spans, profile_span, request, span, write
from tests.analysis.test_cli import _Jaeger, jaeger_server, run

ESC_NAME = "app.\x1b]0;pwned\x07render\x1b[2J\nforged line\u202e"
ESCAPED = "app.\\x1b]0;pwned\\x07render\\x1b[2J\\x0aforged line\\u202e"
# Controls of every kind, the newline and tab excepted (they are an output's own layout).
CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def test_escape_sequences_in_a_trace_never_reach_the_terminal(tmp_path: Path) -> None:
    spans = key_sequence_spans(ESC_NAME, [1, 1, 2, 1], cpu=1_000_000, file="/app/\x1b[31mred.py")
    spans.append(span("app.root\x9b2J", 99, 0, 10_000, cpu=10))
    path = write(str(tmp_path / "evil.jsonl"), [request(spans, service="svc\x1b[8m")])
    for fmt in ("text", "html"):
        result = run(path, "--report", "all", "--format", fmt, "--lookup-ns", "50")
        assert result.returncode == 0, result.stderr
        for stream in (result.stdout, result.stderr):
            assert "\x1b" not in stream and "\x9b" not in stream and "\u202e" not in stream and "\x07" not in stream
        assert "forged line" in result.stdout and not any(
            line.startswith("forged line") for line in result.stdout.splitlines())
    text = run(path, "--report", "cache", "--lookup-ns", "50").stdout
    assert ESCAPED in text and "\\x1b[31mred.py" in text


def test_escape_sequences_in_a_trace_reach_no_output_file(tmp_path: Path) -> None:
    # Every string of the input carries controls: names, files, service, the CPU counter and unit.
    spans = key_sequence_spans(ESC_NAME, [1, 1, 2, 1], cpu=1_000_000, file="/app/\x1b[31mred.py")
    document = request(spans, service="svc\x1b[8m", unit="n\x1b[2Js\u202e")
    for attribute in document["resourceSpans"][0]["resource"]["attributes"]:
        if attribute["key"] == "callspan.cpu.counter":
            attribute["value"]["stringValue"] += "\x1b]0;x\x07"
    path = write(str(tmp_path / "evil.jsonl"), [document])
    outputs = {name: tmp_path / name for name in ("report.html", "out.folded", "out.speedscope.json")}
    result = run(path, "--report", "all", "--format", "html", "-o", str(outputs["report.html"]), "--folded",
                 str(outputs["out.folded"]), "--speedscope", str(outputs["out.speedscope.json"]), "--lookup-ns", "50")
    assert result.returncode == 0, result.stderr
    for name, output in outputs.items():
        assert not CONTROLS.search(output.read_text()), name
    # Folded: one stack a line (the newline a space, ";" a ":"), the rest escaped.
    assert outputs["out.folded"].read_text() == "app.\\x1b]0:pwned\\x07render\\x1b[2J forged line\\u202e 4000000\n"
    assert "data-unit='n\\x1b[2Js\\u202e'" in outputs["report.html"].read_text()


def test_escape_sequences_in_paths_and_warnings_are_escaped(tmp_path: Path) -> None:
    evil = tmp_path / "bad\x1b[2Jname.jsonl"
    evil.write_bytes(b"{nope\n")
    result = run(str(evil))
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "\x1b" not in result.stderr and "bad\\x1b[2Jname.jsonl:1: invalid JSON" in result.stderr
    partial = tmp_path / "partial\x1b]0;x\x07.jsonl"
    partial.write_bytes(json.dumps(request(key_sequence_spans("m.f", [1, 1]))).encode() + b"\n{\"resourceSp")
    result = run(str(partial))
    assert result.returncode == 0 and "skipped an incomplete last line" in result.stderr
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr
    # The report says so too (a report kept in a file), escaped alike.
    warning = result.stdout.split("Input warnings (1; also on stderr):\n  ")[1]
    assert warning.startswith(str(tmp_path / "partial\\x1b]0;x\\x07.jsonl:2: skipped an"))


def impossible_spans() -> list[dict[str, Any]]:
    return [
        span("m.f", 1, 1_000, 500, cpu=100, args=1, ret=2, run=0),  # ends before it starts
        span("m.f", 2, -50, 200, cpu=-30, args=1, ret=2),  # negative start and CPU
        span("m.g", 3, 10, 20, cpu=10, cpu_self=40),  # self above total
        span("m.g", 4, 30, 40, cpu=5, run=-5),  # negative running time
    ]


def test_impossible_times_are_clamped_and_counted(tmp_path: Path) -> None:
    path = write(str(tmp_path / "t.jsonl"), [request(impossible_spans())])
    result = run(path, "--report", "all", "--format", "json", "--lookup-ns", "50")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["input"]["impossible"] == {"cpu_self_above_total": 1, "end_before_start": 1, "negative_cpu": 1,
                                          "negative_time": 1, "negative_value": 1}
    warnings = doc["input"]["warnings"]
    assert "input: 1 span(s) or listed call(s) ended before they started: end set to start (wall time 0)" in warnings
    assert len([w for w in warnings if w.startswith("input: ")]) == 5
    assert sum(w.startswith("callspan: warning: input: ") for w in result.stderr.splitlines()) == 5
    # Self CPU: f 100 + 0 (clamped), g 10 (clamped to its total) + 5.
    assert doc["cpu"]["total_self"] == 115 and doc["cache"]["total_cpu"] == {"ns": 115}
    latency = {row["function"]: row for row in doc["latency"]["functions"]}
    assert latency["m.f"]["total_wall_ns"] == 0 + 200 and latency["m.f"]["max_ns"] == 200
    assert latency["m.g"]["mean_running_ns"] == 5  # (10 + 0) / 2
    assert doc["input"]["time_range_ns"] == [10, 1_000]  # the clamped start 0 means "unknown"
    # The text report lists the counted warnings under its header.
    text = run(path, "--report", "cpu").stdout
    assert text.splitlines()[2:10] == [
        "Input warnings (5; also on stderr):",
        "  input: 1 span(s) or summaries with self CPU above their total CPU: self set to the total",
        "  input: 1 span(s) or listed call(s) ended before they started: end set to start (wall time 0)",
        "  input: 1 negative CPU figure(s): set to 0",
        "  input: 1 negative start or end time(s): set to 0",
        "  input: 1 negative duration(s) or count(s) (running, suspended, awaits, return size, summarised",
        "    calls): set to 0",
        "",
    ]


def test_impossible_aggregates_are_clamped_and_counted(tmp_path: Path) -> None:
    profile = profile_span(0, functions=[{"id": 1, "name": "m.f", "calls": 3, "wall_ns": -90, "cpu_self": 60}],
                           nodes=[{"id": 1, "function": 1, "calls": 3, "wall_ns": 90, "cpu_total": -60,
                                   "cpu_self": 60}, {"id": 2, "function": 1, "parent": 1, "calls": -1}],
                           reuse=[(1, -3, 2.0, 40.0, 60.0)], gamma=0.5)
    path = write(str(tmp_path / "t.jsonl"), [request([profile])])
    result = run(path, "--report", "all", "--format", "json", "--lookup-ns", "50")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    # wall_ns, cpu_total, calls, the negative reuse distance and gamma 0.5
    assert doc["input"]["impossible"] == {"negative_aggregate": 5}
    assert doc["cpu"]["total_self"] == 60


# -- --jaeger ------------------------------------------------------------------------------------

@pytest.fixture
def servers() -> Iterator[list[tuple[str, type[_Jaeger]]]]:
    """Two HTTP servers on 127.0.0.1 (two origins: different ports)."""
    with jaeger_server() as one, jaeger_server() as two:
        yield [one, two]


def _answer() -> bytes:
    return json.dumps({"result": request(key_sequence_spans("m.f", [1, 1, 2, 1], cpu=1_000_000))}).encode()


def test_jaeger_redirects_elsewhere_are_not_followed(servers: list[tuple[str, type[_Jaeger]]]) -> None:
    (here, jaeger), (there, other) = servers
    other.routes["/api/v3/traces"] = (200, _answer())
    jaeger.routes["/api/v3/traces"] = (302, b"", {"Location": there + "/api/v3/traces?token=leaked"})
    result = run("--jaeger", here, "--service", "svc")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "redirected to another origin (" + there + "/api/v3/traces?token=***): not followed" in result.stderr
    assert other.seen == [] and "leaked" not in result.stderr


def test_jaeger_redirects_within_its_origin_are_followed(servers: list[tuple[str, type[_Jaeger]]]) -> None:
    (here, jaeger), _ = servers
    jaeger.routes["/old/api/v3/traces"] = (301, b"", {"Location": "/new/api/v3/traces"})
    jaeger.routes["/new/api/v3/traces"] = (200, _answer())
    result = run("--jaeger", here + "/old", "--service", "svc", "--format", "json", "--lookup-ns", "50")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["cache"]["opportunities"][0]["calls"] == 4
    assert [urllib.parse.urlsplit(p).path for p in jaeger.seen] == ["/old/api/v3/traces", "/new/api/v3/traces"]


def test_jaeger_query_stays_in_place_and_credentials_are_never_shown(
        servers: list[tuple[str, type[_Jaeger]]]) -> None:
    (here, jaeger), _ = servers
    jaeger.routes["/prefix/api/v3/traces"] = (200, _answer())
    host = urllib.parse.urlsplit(here).netloc
    base = f"http://me:pa55word@{host}/prefix/?token=s3cret"
    result = run("--jaeger", base, "--service", "svc", "--format", "json", "--lookup-ns", "50")
    assert result.returncode == 0, result.stderr
    ((path,), (authorization,)) = jaeger.seen, jaeger.authorizations
    parts = urllib.parse.urlsplit(path)
    assert parts.path == "/prefix/api/v3/traces"
    assert urllib.parse.parse_qsl(parts.query)[0] == ("token", "s3cret")
    assert dict(urllib.parse.parse_qsl(parts.query))["query.service_name"] == "svc"
    assert authorization == "Basic " + base64.b64encode(b"me:pa55word").decode()
    (source,) = json.loads(result.stdout)["input"]["sources"]
    assert source.startswith(f"http://me:***@{host}/prefix/api/v3/traces?token=***&query.service_name=svc&")
    assert "s3cret" not in result.stdout + result.stderr and "pa55word" not in result.stdout + result.stderr
    # Errors too: an HTTP error, an unreachable server.
    jaeger.routes["/prefix/api/v3/traces"] = (500, b"s3cret in the body")
    result = run("--jaeger", base, "--service", "svc")
    assert result.returncode == 2 and "HTTP 500" in result.stderr
    assert "s3cret" not in result.stderr and "pa55word" not in result.stderr
    result = run("--jaeger", "http://me:pa55word@127.0.0.1:9/?token=s3cret", "--service", "svc")
    assert result.returncode == 2 and result.stderr.startswith("callspan: error: cannot reach Jaeger at ")
    assert "s3cret" not in result.stderr and "pa55word" not in result.stderr


# -- output files --------------------------------------------------------------------------------

def test_outputs_replace_a_symbolic_link_and_leave_its_target(tmp_path: Path) -> None:
    path = write(str(tmp_path / "t.jsonl"), [request(key_sequence_spans("m.f", [1, 1, 2, 1], cpu=1_000_000))])
    victims = {}
    for name in ("report.txt", "out.folded", "out.speedscope.json"):
        victim = tmp_path / f"victim-{name}"
        victim.write_text("precious\n")
        (tmp_path / name).symlink_to(victim)
        victims[name] = victim
    result = run(path, "--report", "all", "-o", str(tmp_path / "report.txt"), "--folded",
                 str(tmp_path / "out.folded"), "--speedscope", str(tmp_path / "out.speedscope.json"),
                 "--lookup-ns", "50")
    assert result.returncode == 0, result.stderr
    for name, victim in victims.items():
        assert victim.read_text() == "precious\n"
        assert not (tmp_path / name).is_symlink() and (tmp_path / name).read_text() != "precious\n"
        assert f"callspan: {tmp_path / name} was a symbolic link to {victim}: replaced by the output" in result.stderr
    assert "m.f" in (tmp_path / "report.txt").read_text()
