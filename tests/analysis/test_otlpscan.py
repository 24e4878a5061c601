"""The compiled OTLP request reader (``_otlpscan.c``) against its reference, the Python reader.

The contract: ``scan_request(line)`` either returns None (the Python reader then handles the
line, errors included) or exactly what the Python reader makes of it: the same resources and
scopes, and per span either the tuple ``decode_span`` builds or the span's own JSON.
"""

from __future__ import annotations

import json
import os
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from callspan.analysis import readers
from callspan.analysis.otlp import decode_span
from tests.analysis.otlp_fixtures import calls_event, mutated_request, request, span, summary

if readers.SCAN_REQUEST is None:
    if os.environ.get("CALLSPAN_REQUIRE_EXTENSION") == "1":
        raise RuntimeError("CALLSPAN_REQUIRE_EXTENSION=1 but callspan.analysis._otlpscan is not built")
    pytest.skip("the compiled request reader is not built", allow_module_level=True)

scan = readers.SCAN_REQUEST
assert scan is not None


def python_resources(document: Any) -> list[tuple[Any, list[tuple[Any, Any]]]]:
    """What ``add_request`` hands to ``add_resources`` for a parsed request."""
    out = []
    for resource_spans in document.get("resourceSpans") or ():
        blocks = resource_spans.get("scopeSpans") or resource_spans.get("instrumentationLibrarySpans") or ()
        out.append((resource_spans.get("resource") or {},
                    [(block.get("scope") or block.get("instrumentationLibrary") or {}, block.get("spans") or ())
                     for block in blocks]))
    return out


def typed(values: tuple[Any, ...]) -> list[tuple[type, Any]]:
    return [(type(v), v) for v in values]


def check(line: bytes) -> Any:
    """Assert the contract for one line; return the scanner's answer."""
    scanned = scan(line)
    try:
        document = readers._loads(line)
    except (ValueError, RecursionError):
        assert scanned is None, "accepted a line the Python reader rejects"
        return None
    if scanned is None:
        return None
    assert isinstance(document, dict) and "resourceSpans" in document
    expected = python_resources(document)
    assert len(scanned) == len(expected)
    for (resource, blocks), (want_resource, want_blocks) in zip(scanned, expected, strict=True):
        assert (readers._loads(resource) if resource else {}) == want_resource
        assert len(blocks) == len(want_blocks)
        for (scope, spans), (want_scope, want_spans) in zip(blocks, want_blocks, strict=True):
            assert (readers._loads(scope) if scope else {}) == want_scope
            assert len(spans) == len(want_spans)
            for got, want in zip(spans, want_spans, strict=True):
                if isinstance(got, bytes):
                    assert readers._loads(got) == want
                else:
                    assert isinstance(got, tuple)
                    assert typed(got) == typed(decode_span(want))
    return scanned


def dumps(document: Any, rng: random.Random | None = None) -> bytes:
    if rng is None:
        return json.dumps(document, separators=(",", ":")).encode()
    text = json.dumps(document, ensure_ascii=rng.random() < 0.5,
                      separators=rng.choice([(",", ":"), (", ", ": "), (" ,\t", " :\r\n")]))
    return text.encode()


def usual_request() -> dict[str, Any]:
    return request([span("m.f", 1, 100, 250, args=7, ret=8, cpu=40, cpu_self=30, parent=9),
                    span("m.Klass.method", 2, 0, 300, args=3, cpu=90, kind="coroutine",
                         extra={"callspan.await.suspended_ns": 120, "callspan.await.count": 2,
                                "callspan.method": True, "callspan.args.identity": True}),
                    span("m.err", 3, 5, 6, error=True, args=1),
                    span("m.unhashable", 4, 5, 9, extra={"callspan.args.hashable": False,
                                                          "callspan.args.unhashable": "list, dict",
                                                          "callspan.return.hashable": False}),
                    span("ünï.cødé", 5, 1, 2, file="/srv/ü.py")])


def test_the_tracers_usual_spans_are_decoded_in_c() -> None:
    scanned = check(dumps(usual_request()))
    assert scanned is not None
    spans = scanned[0][1][0][1]
    assert [type(s) for s in spans] == [tuple] * 5
    f, method, err, unhashable, unicode = spans
    assert f[:6] == ("m.f", "function", "/app/m.py", 10, 100, 250)
    assert f[7:14] == (40, 30, 150, 7, 7, 8, 32) and f[21:24] == (1, f"{1:032x}", 9)
    assert method[14:16] == (120, 2) and method[19:21] == (True, True) and method[1] == "coroutine"
    assert err[6] is True and err[12] == 0
    assert unhashable[16:19] == (True, "list, dict", True)
    assert unicode[0] == "ünï.cødé" and unicode[2] == "/srv/ü.py"


def test_escaped_strings_are_decoded_in_c() -> None:
    # What json.dumps (callspan's own writer) makes of non-ASCII names and paths.
    s = span('m."q"\\n\t\x01/ü€', 1, 0, 10, file="C:\\srv\\ü.py", trace=5)
    line = dumps(request([s])).replace(b"/", b"\\/")
    assert b"\\u00fc" in line and b"\\u20ac" in line
    scanned = check(line)
    decoded = scanned[0][1][0][1][0]
    assert isinstance(decoded, tuple)
    assert decoded[0] == 'm."q"\\n\t\x01/ü€' and decoded[2] == "C:\\srv\\ü.py"


def test_resource_and_scope_come_back_as_their_json() -> None:
    document = usual_request()
    resource, blocks = scan(dumps(document))[0]
    assert json.loads(resource) == document["resourceSpans"][0]["resource"]
    assert json.loads(blocks[0][0]) == document["resourceSpans"][0]["scopeSpans"][0]["scope"]


@pytest.mark.parametrize("change", [
    "summary", "events", "int as double", "hash not hex", "base64 id", "long id",
    "duplicate span key", "kv without value", "attributes as object", "status code 2.0", "int with plus",
    "escaped attribute key", "escaped value member",
])
def test_unusual_spans_are_left_to_python(change: str) -> None:
    s = span("m.f", 1, 0, 10, args=5, ret=6, cpu=3)
    attrs = s["attributes"]
    line: bytes | None = None
    if change == "summary":
        s["attributes"] = attrs + [a for a in span("x", 1, 0, 1, extra=summary(["m.g"], [2]))["attributes"]
                                   if a["key"].startswith("callspan.summary")]
    elif change == "events":
        s["events"] = [calls_event("m.g", [1], [5])]
    elif change == "int as double":
        next(a for a in attrs if a["key"] == "callspan.cpu.total")["value"] = {"doubleValue": 3.0}
    elif change == "hash not hex":
        next(a for a in attrs if a["key"] == "callspan.args.hash")["value"]["stringValue"] = "not-hex!"
    elif change == "base64 id":
        s["spanId"] = "AAAAAAAAAAE="
    elif change == "long id":
        s["spanId"] = "1" * 17
    elif change == "kv without value":
        attrs.append({"key": "code.line.number"})
    elif change == "attributes as object":
        s["attributes"] = {"a": 1}
    elif change == "status code 2.0":
        s["status"] = {"code": 2.0}
    elif change == "int with plus":
        next(a for a in attrs if a["key"] == "callspan.cpu.total")["value"] = {"intValue": "+3"}
    line = dumps(request([s]))
    if change == "duplicate span key":
        line = line.replace(b'"name":"m.f"', b'"name":"m.f","name":"m.g"')
    elif change == "escaped attribute key":
        line = line.replace(b'"code.function.name"', b'"code.function.nam\\u0065"')
    elif change == "escaped value member":
        assert b'"boolValue":true' in line
        line = line.replace(b'"boolValue":true', b'"bool\\u0056alue":false')
    scanned = check(line)
    assert scanned is not None
    assert isinstance(scanned[0][1][0][1][0], bytes)


@pytest.mark.parametrize("line", [
    b"", b"[]", b'{"data": []}', b'{"resourceSpans": []} x', b'{"resourceSpans": NaN}',
    b'{"resourceSpans": [], "a": "\\ud800"}', b'{"resourceSpans": [], "a": "\\ud800\\u0041"}',
    b'{"resourceSpans": [], "a": "\\udc00\\ud800"}', b'{"resourceSpans": [], "a": "\\ud800\\udc0"}', b'{"resourceSpans": [], "a": "\xff"}',
    b'{"resourceSpans": [], "a": "\x01"}', b'{"resourceSpans": [], "resourceSpans": []}',
    b'{"resourceSpans": {}}', b'{"resourceSpans": [{"scopeSpans": [{"spans": [1]}]}]}',
    b'{"resourceSpans": [], "deep": ' + b"[" * 100 + b"]" * 100 + b"}",
    b'{"resourceSpans": [01]}', b'{"resourceSpans": [1.]}', b'{"resourceSpans": [tru]}',
    b'{"resourceSpans": [],}', b'{"resourceSpans": [1,]}', b'{"resourceSpans" []}',
])
def test_lines_left_to_the_python_reader(line: bytes) -> None:
    assert scan(line) is None
    check(line)


def test_empty_structure_is_one_empty_request() -> None:
    assert check(b'{"resourceSpans": null}') == []
    assert check(b' {"other": 1, "resourceSpans": [{"resource": null, "scopeSpans": null}]}\r') == [(None, [])]


def test_old_field_names_and_falsy_scope() -> None:
    document = {"resourceSpans": [{"scopeSpans": [], "instrumentationLibrarySpans": [
        {"scope": {}, "instrumentationLibrary": {"name": "callspan"}, "spans": [span("m.f", 1, 0, 1)]}]}]}
    scanned = check(dumps(document))
    assert json.loads(scanned[0][1][0][0]) == {"name": "callspan"}


# Field encodings the OTLP/JSON spec allows or writers use, mixed at random: the usual ones
# (decoded in C) on most spans, odd ones (left to Python) on some.
_USUAL_INTS = ["str", "num", "zeros", "neg", "empty", "null"]
_ODD_INTS = ["plus", "space", "double", "big", "num_big"]
_usual_hashes = st.one_of(st.text("0123456789abcdefABCDEF", min_size=1, max_size=20), st.just("0" * 16))
_odd_hashes = st.one_of(st.sampled_from(["", "xyz", "0x12", "12_34"]), st.text(max_size=18))


def _int_value(encoding: str, n: int) -> Any:
    return {"str": {"intValue": str(n)}, "num": {"intValue": n}, "zeros": {"intValue": f"00{n}"},
            "neg": {"intValue": str(-n)}, "plus": {"intValue": f"+{n}"}, "space": {"intValue": f" {n}"},
            "double": {"doubleValue": float(n)}, "empty": {}, "big": {"intValue": str(2**63 + n)},
            "num_big": {"intValue": 2**64 + n}, "null": None}[encoding]


@st.composite
def encoded_spans(draw: st.DrawFn) -> dict[str, Any]:
    odd = draw(st.integers(0, 3)) == 0
    names = st.text(max_size=8) if odd or draw(st.booleans()) else st.text("abc._ü€😀\"/\n", max_size=8)
    s = span(draw(names) or "m.f", draw(st.integers(0, 2**64 - 1)), draw(st.integers(0, 2**62)),
             draw(st.integers(0, 2**62)), args=draw(st.integers(1, 2**64 - 1)), ret=draw(st.integers(1, 2**64 - 1)),
             cpu=draw(st.integers(0, 2**40)), parent=draw(st.one_of(st.none(), st.integers(0, 2**64 - 1))),
             error=draw(st.booleans()), thread=draw(st.integers(-(2**63), 2**63 - 1)))
    for kv in s["attributes"]:
        if "intValue" in kv["value"] and draw(st.booleans()):
            encoding = draw(st.sampled_from(_USUAL_INTS + _ODD_INTS if odd else _USUAL_INTS))
            kv["value"] = _int_value(encoding, abs(int(kv["value"]["intValue"])))
        elif kv["key"].endswith(".hash") and draw(st.booleans()):
            kv["value"] = {"stringValue": draw(st.one_of(_usual_hashes, _odd_hashes) if odd else _usual_hashes)}
        elif "boolValue" in kv["value"] and draw(st.booleans()):
            kv["value"] = draw(st.sampled_from([{"boolValue": False}, {"boolValue": "false"}, {}, None,
                                                {"boolValue": True, "x": 1}]))
    extras = draw(st.lists(st.sampled_from([
        ("callspan.args.hashable", {"boolValue": False}), ("callspan.args.unhashable", {"stringValue": "a,b"}),
        ("callspan.await.suspended_ns", {"intValue": "5"}), ("callspan.await.count", {"intValue": 2}),
        ("callspan.method", {"boolValue": True}), ("callspan.args.identity", {"boolValue": True}),
        ("error.type", None), ("code.function.name", {"stringValue": ""}), ("thread.id", {"intValue": "-1"}),
        ("other", [1, {"x": None}]), ("callspan.kind", {}), ("callspan.return.size", {"intValue": "0"}),
    ] + ([("callspan.await.count", {"doubleValue": 2.5}), ("code.function.name", {"intValue": "5"}),
          ("callspan.args.unhashable", {"boolValue": True}), ("code.line.number", "x")] if odd else [])),
        max_size=4))
    s["attributes"] += [{"key": k, "value": v} for k, v in extras]
    if draw(st.booleans()):
        s["status"] = draw(st.sampled_from([{"code": 2}, {"code": "2"}, {"code": "STATUS_CODE_ERROR"}, {"code": 1},
                                            {"code": True}, {"code": None}, None, {"message": "x"}]
                                           + ([{"code": 2.0}, "x"] if odd else [])))
    for field in ("startTimeUnixNano", "endTimeUnixNano"):
        if draw(st.booleans()):
            s[field] = draw(st.sampled_from([int(s[field]), "", None, "0"] + ([f"{s[field]}.5"] if odd else [])))
    for field in ("spanId", "parentSpanId", "traceId", "name"):
        if draw(st.integers(0, 3)) == 0:
            s[field] = draw(st.sampled_from(["", None, "ABCDEF0123456789"]
                                            + (["AAAAAAAAAAE=", 5, "12345678901234567"] if odd else [])))
    return s


@settings(max_examples=500, deadline=None)
@given(st.lists(encoded_spans(), min_size=1, max_size=4), st.randoms(use_true_random=False))
def test_any_encoding_gives_what_the_python_reader_gives(spans: list[dict[str, Any]], rng: random.Random) -> None:
    check(dumps(request(spans), rng))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_structure_gives_what_the_python_reader_gives(data: st.DataObject) -> None:
    check(dumps(mutated_request(data), data.draw(st.randoms(use_true_random=False))))


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_damaged_bytes_are_never_accepted_differently(data: st.DataObject) -> None:
    line = bytearray(dumps(request([span("m.f", 1, 0, 9, args=3, ret=4, cpu=5)])))
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(line) - 1))
        action = data.draw(st.sampled_from(["replace", "insert", "delete", "truncate"]))
        if action == "truncate":
            del line[at:]
            if not line:
                break
        elif action == "delete":
            del line[at]
        else:
            byte = data.draw(st.one_of(st.sampled_from(list(b'{}[],:"\\0123456789aeflnrstu -+.')),
                                       st.integers(0, 255)))
            if action == "replace":
                line[at] = byte
            else:
                line.insert(at, byte)
        if not line:
            break
    check(bytes(line))


def test_real_tracer_output_gives_the_same_reports_through_both_readers(tmp_path: Any,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse
    import subprocess
    import sys
    from pathlib import Path

    from callspan.analysis.cli import add_analyze_arguments, analyze, render

    demo = Path(readers.__file__).resolve().parents[1] / "demo" / "shop.py"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "CALLSPAN_"))}
    subprocess.run([sys.executable, "-m", "callspan", "run", "-o", "t.jsonl", str(demo)], cwd=tmp_path, env=env,
                   check=True, capture_output=True, timeout=120)
    lines = (tmp_path / "t.jsonl").read_bytes().splitlines()
    assert lines and all(scan(line) is not None for line in lines)  # the compiled reader took every line
    parser = argparse.ArgumentParser()
    add_analyze_arguments(parser)
    options = [str(tmp_path / "t.jsonl"), "--report", "all", "--no-progress", "--min-calls", "1"]

    def report() -> str:
        return render(analyze(parser.parse_args(options)), "json")

    compiled = report()
    monkeypatch.setattr(readers, "SCAN_REQUEST", None)
    assert report() == compiled
    assert '"function"' in compiled
