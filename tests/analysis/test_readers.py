"""Readers: OTLP JSON lines (plain, gzip, chunked, many files, directories), Jaeger JSON, errors."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any

import pytest

from callspan.analysis import readers
from callspan.analysis.loader import LoadOptions, load_bytes, load_files, new_model
from callspan.analysis.model import Model
from callspan.analysis.readers import expand_inputs, is_trace_file, plan
from callspan.errors import CallspanError
from tests.analysis import otlp_fixtures
from tests.analysis.otlp_fixtures import (
    arbitrary_json,
    calls_event,
    jaeger_tag,
    key_sequence_spans,
    lines,
    mutated_request,
    request,
    span,
    summary,
    write,
)


@pytest.fixture(autouse=True, params=["compiled", "python"])
def request_reader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs through the compiled OTLP request reader and through the Python one."""
    return otlp_fixtures.compiled_or_python(request, monkeypatch, readers, "SCAN_REQUEST", "request reader")


def load(*paths: str | Path, **options: Any) -> Model:
    return load_files([str(p) for p in paths], LoadOptions(slow_keep=5, **options))


def fingerprint(model: Model) -> dict[str, Any]:
    """What the analyses see, independent of indices."""
    out: dict[str, Any] = {"spans": model.spans, "warnings": len(model.warnings)}
    for index, info in enumerate(model.functions):
        columns = model.calls[index]
        calls = sorted(zip(columns.start, columns.end, columns.args, columns.ret, columns.cpu, columns.flags,
                           strict=True)) if columns is not None else None
        out[f"{model.processes[info.process].key}/{info.name}"] = (info.stats, info.file, info.line, info.kind, calls)
    rows = sorted(zip(model.rows.span, model.rows.parent, [model.functions[f].name for f in model.rows.func],
                      model.rows.self_cost, model.rows.count, strict=True))
    out["rows"] = rows
    return out


def sample_requests() -> list[dict[str, Any]]:
    return [request(key_sequence_spans("m.f", [1, 2, 1, 3], cpu=50)),
            request([span("m.g", 100, 0, 10, args=5, ret=6, cpu=7),
                     span("m.root", 101, 0, 20, cpu=30, extra=summary(["m.h"], [3], cpu_total=[9]),
                          events=[calls_event("m.h", [1, 1, 1], [2, 4, 6])])]),
            request(key_sequence_spans("m.f", [1, 4], first_id=200, cpu=50))]


def test_plain_file(tmp_path: Path) -> None:
    model = load(write(str(tmp_path / "t.jsonl"), sample_requests()))
    assert model.spans == 8
    assert {f.name for f in model.functions} == {"m.f", "m.g", "m.root", "m.h"}
    f = next(f for f in model.functions if f.name == "m.f")
    assert (f.calls, f.file, f.line, f.kind) == (6, "/app/m.py", 10, "function")
    assert model.processes[0].key == "instance:inst-1" and model.processes[0].cpu_unit == "ns"


def test_gzip_file_gives_the_same_model(tmp_path: Path) -> None:
    plain = load(write(str(tmp_path / "t.jsonl"), sample_requests()))
    zipped = load(write(str(tmp_path / "t.jsonl.gz"), sample_requests(), gz=True))
    assert fingerprint(zipped) == fingerprint(plain)


def test_byte_range_chunks_give_the_same_model(tmp_path: Path) -> None:
    path = write(str(tmp_path / "t.jsonl"), sample_requests() * 5)
    whole = load(path)
    tasks = plan(expand_inputs([path]), chunk_bytes=300)
    assert len(tasks) > 3 and all(t[0] == "range" for t in tasks)
    assert [t[2] for t in tasks[1:]] == [t[3] for t in tasks[:-1]]  # contiguous
    chunked = load(path, chunk_bytes=300)
    assert fingerprint(chunked) == fingerprint(whole)
    parallel = load(path, chunk_bytes=300, jobs=2)
    assert fingerprint(parallel) == fingerprint(whole)


def test_many_files_and_a_directory_of_rotated_files(tmp_path: Path) -> None:
    reqs = sample_requests()
    d = tmp_path / "traces"
    d.mkdir()
    write(str(d / "traces.jsonl"), reqs[:1])
    write(str(d / "traces-2026-01-02T03-04-05.678.jsonl"), reqs[1:2])
    write(str(d / "traces-2026-01-01T00-00-00.000.jsonl.gz"), reqs[2:], gz=True)
    (d / "notes.txt").write_text("not a trace")
    (d / ".hidden.jsonl").write_text("garbage")
    combined = load(write(str(tmp_path / "all.jsonl"), reqs))
    assert fingerprint(load(d)) == fingerprint(combined)
    files = [d / "traces.jsonl", d / "traces-2026-01-02T03-04-05.678.jsonl",
             d / "traces-2026-01-01T00-00-00.000.jsonl.gz"]
    assert fingerprint(load(*files)) == fingerprint(combined)


@pytest.mark.parametrize("name,picked", [
    ("traces.jsonl", True), ("traces.json", True), ("x.ndjson", True), ("traces.jsonl.1", True),
    ("traces.jsonl.2.gz", True), ("traces-2026-01-02.jsonl.gz", True), ("notes.txt", False),
    (".traces.jsonl", False), ("traces.jsonl.swp", False),
])
def test_directory_scan_names(name: str, picked: bool) -> None:
    assert is_trace_file(name) is picked


def test_partial_last_line_is_a_warning(tmp_path: Path) -> None:
    data = lines(sample_requests())
    path = tmp_path / "t.jsonl"
    path.write_bytes(data + data[:100])  # a writer that died mid-line
    model = load(path)
    assert model.spans == 8
    assert len(model.warnings) == 1
    assert "t.jsonl:4: skipped an incomplete last line (100 bytes" in model.warnings[0]
    chunked = load(path, chunk_bytes=200)
    assert chunked.spans == 8 and chunked.warnings == model.warnings


def test_last_line_without_newline_that_parses_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_bytes(lines(sample_requests()).rstrip(b"\n"))
    assert load(path).spans == 8 and load(path).warnings == []


@pytest.mark.parametrize("content,message", [
    (b'{"resourceSpans": []}\n{"resourceSpans": [\n{"resourceSpans": []}\n', ":2: invalid JSON"),
    (b"a,b,c\n1,2,3\n", ":1: not OTLP JSON lines or Jaeger JSON"),
    (b'{"foo": 1}\n', ":1: not OTLP JSON (no resourceSpans) nor Jaeger JSON"),
    (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"startTimeUnixNano": "soon"}]}]}]}\n',
     ":1: invalid span data"),
    (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"spanId": "zz!"}]}]}]}\n', ":1: invalid span data"),
    (b"[1, 2]\n", ":1: not OTLP JSON lines or Jaeger JSON"),
    (b"\x28\xb5\x2f\xfd0000", "zstd-compressed"),
], ids=["garbage-line", "csv", "other-json", "bad-time", "bad-id", "array", "zstd"])
def test_bad_input_names_the_file_and_line(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(CallspanError) as info:
        load(path)
    assert str(info.value).startswith(str(path))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_truncated_gzip(tmp_path: Path) -> None:
    data = gzip.compress(lines(sample_requests() * 20))
    path = tmp_path / "t.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CallspanError, match="truncated gzip file"):
        load(path)


def test_corrupt_gzip(tmp_path: Path) -> None:
    data = bytearray(gzip.compress(lines(sample_requests() * 20)))
    data[40:60] = b"\xff" * 20
    path = tmp_path / "t.jsonl.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(CallspanError, match="t.jsonl.gz: (corrupt gzip data|.*invalid)"):
        load(path)


def test_line_longer_than_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "huge.jsonl"
    path.write_bytes(b'{"resourceSpans": [], "pad": "' + b"x" * 3000 + b'"}\n')
    with pytest.raises(CallspanError, match=r"huge.jsonl:1: line longer than"):
        load(path, max_line=1000)


def test_missing_file_and_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(CallspanError, match="nope.jsonl: no such file or directory"):
        load(tmp_path / "nope.jsonl")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CallspanError, match="directory holds no trace files"):
        load(tmp_path / "empty")


def test_empty_file_is_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    path.write_bytes(b"\n\n")
    model = load(path)
    assert model.spans == 0 and model.warnings == [f"{path}: empty file"]


def test_key_order_empty_fields_and_number_encodings_do_not_matter(tmp_path: Path) -> None:
    base = request(key_sequence_spans("m.f", [1, 1], cpu=50))
    path_a = write(str(tmp_path / "a.jsonl"), [base])
    # Reverse every object's keys, intValues as JSON numbers, ids in base64, "status" absent.
    def reverse(obj: Any) -> Any:
        if isinstance(obj, dict):
            out = {}
            for k in reversed(list(obj)):
                v = obj[k]
                if k == "intValue":
                    v = int(v)
                if k in ("spanId", "parentSpanId") and v:
                    import base64
                    v = base64.b64encode(bytes.fromhex(v)).decode()
                if k == "status":
                    continue
                out[k] = reverse(v)
            return out
        if isinstance(obj, list):
            return [reverse(v) for v in obj]
        return obj
    path_b = tmp_path / "b.jsonl"
    path_b.write_text(json.dumps(reverse(base), indent=None) + "\n")
    assert fingerprint(load(path_b)) == fingerprint(load(path_a))


def test_pretty_printed_document(tmp_path: Path) -> None:
    path = tmp_path / "pretty.json"
    path.write_text("\n".join(json.dumps(r, indent=2) for r in sample_requests()) + "\n")
    assert fingerprint(load(path)) == fingerprint(load(write(str(tmp_path / "x.jsonl"), sample_requests())))


def jaeger_trace() -> dict[str, Any]:
    """A Jaeger /api/traces trace equivalent to: root -> f(1) -> f(1), f summarised x3 on root."""
    trace_id = "00000000000000000000000000000007"

    def tags(name: str, **attrs: Any) -> list[dict[str, Any]]:
        base = {"otel.scope.name": "callspan", "otel.scope.version": "0.1.0", "code.function.name": name,
                "code.file.path": "/app/m.py", "code.line.number": 3, "thread.id": 7, "callspan.kind": "function"}
        base.update(attrs)
        return [jaeger_tag(k, v) for k, v in base.items()]

    summary_tags = {"callspan.summary.function": ["m.h"], "callspan.summary.file": ["/app/m.py"],
                    "callspan.summary.line": [9], "callspan.summary.kind": ["function"],
                    "callspan.summary.count": [3], "callspan.summary.errors": [0],
                    "callspan.summary.wall_ns": [30], "callspan.summary.run_ns": [30],
                    "callspan.summary.cpu_total": [300], "callspan.summary.cpu_self": [300]}
    return {
        "traceID": trace_id,
        "spans": [
            {"traceID": trace_id, "spanID": "00000000000000b1", "operationName": "m.f",
             "references": [{"refType": "CHILD_OF", "traceID": trace_id, "spanID": "00000000000000a1"}],
             "startTime": 1_700_000_000_000_010, "duration": 5, "processID": "p1",
             "tags": tags("m.f", **{"callspan.args.hash": "0000000000000001", "callspan.return.hash":
                                    "0000000000000002", "callspan.cpu.total": 50, "callspan.cpu.self": 50})},
            {"traceID": trace_id, "spanID": "00000000000000b2", "operationName": "m.f",
             "references": [{"refType": "CHILD_OF", "traceID": trace_id, "spanID": "00000000000000a1"}],
             "startTime": 1_700_000_000_000_020, "duration": 5, "processID": "p1",
             "tags": tags("m.f", **{"callspan.args.hash": "0000000000000001", "callspan.return.hash":
                                    "0000000000000002", "callspan.cpu.total": 50, "callspan.cpu.self": 50,
                                    "error": True, "otel.status_code": "ERROR"})},
            {"traceID": trace_id, "spanID": "00000000000000a1", "operationName": "m.root", "references": [],
             "startTime": 1_700_000_000_000_000, "duration": 100, "processID": "p1",
             "tags": tags("m.root", **{"callspan.cpu.total": 1000, "callspan.cpu.self": 600}, **summary_tags),
             "logs": [{"timestamp": 1_700_000_000_000_050, "fields": [
                 jaeger_tag("event", "callspan.calls"), jaeger_tag("callspan.function", "m.h"),
                 jaeger_tag("callspan.args.hash", ["0000000000000005", "0000000000000005", "0000000000000006"]),
                 jaeger_tag("callspan.return.hash", ["0000000000000009", "0000000000000009", ""]),
                 jaeger_tag("callspan.start_ns", [1, 2, 3]), jaeger_tag("callspan.end_ns", [2, 3, 4]),
                 jaeger_tag("callspan.cpu", [100, 100, 100]), jaeger_tag("callspan.sample_rate", 1.0)]}]},
        ],
        "processes": {"p1": {"serviceName": "svc", "tags": [jaeger_tag("process.pid", 42),
                                                             jaeger_tag("callspan.cpu.unit", "ns")]}},
    }


def test_jaeger_json(tmp_path: Path) -> None:
    path = tmp_path / "jaeger.json"
    path.write_text(json.dumps({"data": [jaeger_trace()], "total": 0, "limit": 0, "offset": 0, "errors": None},
                               indent=2))
    model = load(path)
    assert model.spans == 3
    assert [p.pid for p in model.processes] == [42]
    assert model.processes[0].cpu_unit == "ns" and model.processes[0].service == "svc"
    f = next(f for f in model.functions if f.name == "m.f")
    assert (f.calls, f.stats[1], f.stats[3]) == (2, 1, 100)  # calls, errors, cpu self
    h = next(f for f in model.functions if f.name == "m.h")
    assert (h.calls, h.line, h.stats[2]) == (3, 9, 300)
    cols = model.calls[model.functions.index(h)]
    assert cols is not None and list(cols.args) == [5, 5, 6] and list(cols.start) == [1, 2, 3]
    # microseconds -> nanoseconds
    f_cols = model.calls[model.functions.index(f)]
    assert f_cols is not None and list(f_cols.start) == [1_700_000_000_000_010_000, 1_700_000_000_000_020_000]
    # parent links: both m.f and the m.h summary row hang under m.root
    root_id = 0xA1
    assert sorted(p for p, s in zip(model.rows.parent, model.rows.span, strict=True) if s != root_id) == [root_id] * 3


def test_jaeger_process_without_pid_is_one_process_per_entry(tmp_path: Path) -> None:
    trace = jaeger_trace()
    trace["processes"] = {"p1": {"serviceName": "svc", "tags": [jaeger_tag("hostname", "a")]}}
    other = jaeger_trace()
    other["processes"] = {"p1": {"serviceName": "svc", "tags": [jaeger_tag("hostname", "b")]}}
    for s in other["spans"]:
        s["traceID"] = "00000000000000000000000000000008"
    path = tmp_path / "jaeger.json"
    path.write_text(json.dumps({"data": [trace, other, jaeger_trace() | {"processes": trace["processes"]}]}))
    model = load(path)
    assert len(model.processes) == 2
    assert all(p.key.startswith("jaeger:svc:") for p in model.processes)


def test_jaeger_v3_answer_lines(tmp_path: Path) -> None:
    reqs = sample_requests()
    path = tmp_path / "v3.json"
    path.write_text("".join(json.dumps({"result": r}) + "\n" for r in reqs))
    expected = load(write(str(tmp_path / "x.jsonl"), reqs))
    assert fingerprint(load(path)) == fingerprint(expected)
    # concatenated without newlines, as a stream of chunks
    model = new_model(LoadOptions(slow_keep=5))
    load_bytes(model, "".join(json.dumps({"result": r}) for r in reqs).encode(), "jaeger")
    assert fingerprint(model) == fingerprint(expected)


def test_jaeger_error_payload(tmp_path: Path) -> None:
    path = tmp_path / "err.json"
    path.write_text(json.dumps({"data": None, "errors": [{"code": 400, "msg": "bad service"}]}))
    with pytest.raises(CallspanError, match=r"err.json:1: Jaeger reported errors \(code 400\)$"):
        load(path)  # the server's text ("bad service") is not shown


def test_non_callspan_spans_are_frames(tmp_path: Path) -> None:
    http = {"traceId": f"{1:032x}", "spanId": f"{500:016x}", "name": "GET /cart", "kind": 2,
            "startTimeUnixNano": "0", "endTimeUnixNano": "1000", "attributes": [], "status": {}}
    req = request([span("m.f", 1, 10, 20, parent=500, cpu=5)])
    req["resourceSpans"][0]["scopeSpans"].append({"scope": {"name": "opentelemetry.instrumentation.wsgi"},
                                                  "spans": [http]})
    model = load(write(str(tmp_path / "t.jsonl"), [req]))
    assert len(model.processes) == 1  # the callspan scope's pid applies to the whole resource
    kinds = {f.name: f.kind for f in model.functions}
    assert kinds == {"m.f": "function", "GET /cart": "span"}


def test_single_source_counted_once(tmp_path: Path) -> None:
    path = write(str(tmp_path / "t.jsonl"), sample_requests())
    assert load(path).sources == [path]
    assert os.path.exists(path)


# -- robustness: malformed documents raise CallspanError, nothing else -------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from callspan.analysis.model import Batch  # noqa: E402
from callspan.analysis.readers import add_document  # noqa: E402


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_malformed_requests_raise_only_callspan_error(data: st.DataObject) -> None:
    document = mutated_request(data)
    try:
        add_document(Batch(), document, "f.jsonl:1")
    except CallspanError as exc:
        assert str(exc).startswith("f.jsonl:1: ") and "\n" not in str(exc)


@settings(max_examples=200, deadline=None)
@given(arbitrary_json)
def test_arbitrary_json_raises_only_callspan_error(document: Any) -> None:
    try:
        add_document(Batch(), document, "f.jsonl:1")
    except CallspanError as exc:
        assert str(exc).startswith("f.jsonl:1: ")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(st.data())
def test_malformed_input_never_crashes_the_reports(tmp_path: Path, data: st.DataObject) -> None:
    import argparse

    from callspan.analysis.cli import add_analyze_arguments, analyze, render

    path = tmp_path / "t.jsonl"
    path.write_bytes(lines([mutated_request(data), mutated_request(data)]))
    parser = argparse.ArgumentParser()
    add_analyze_arguments(parser)
    try:
        results = analyze(parser.parse_args([str(path), "--report", "all", "--no-progress"]))
    except CallspanError:
        return
    for fmt in ("text", "json", "html"):
        assert render(results, fmt)


def test_non_string_names_are_text(tmp_path: Path) -> None:
    bad = span("m.f", 1, 0, 10, cpu=5)
    bad["attributes"] = [a for a in bad["attributes"] if a["key"] != "code.function.name"]
    bad["name"] = 42
    model = load(write(str(tmp_path / "t.jsonl"), [request([bad])]))
    assert [f.name for f in model.functions] == ["42"]
