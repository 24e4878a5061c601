"""Damaged and hostile inputs through ``callspan analyze``, as a user runs it (in this process, a
few hundred cases per run): the exit status is 0 or 2, an error is one line on stderr, nothing
escapes as a traceback, and a report that is written has no negative total, no share or hit
ratio above 1, and (as text, HTML or folded stacks) no terminal control character.

The cases are drawn by a seeded generator: ``CALLSPAN_FUZZ_SEED`` and ``CALLSPAN_FUZZ_CASES``
choose others (a failing case names its seed and mutation, and is reproduced by it alone).
"""

from __future__ import annotations

import copy
import gzip
import json
import os
import random
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from callspan.cli import main
from tests.analysis.otlp_fixtures import calls_event, lines, request, span, summary
from tests.analysis.test_profile import requests as profile_requests
from tests.analysis.test_readers import jaeger_trace

SEED = int(os.environ.get("CALLSPAN_FUZZ_SEED", "15"))
CASES = int(os.environ.get("CALLSPAN_FUZZ_CASES", "320"))
# Terminal controls, C1 controls and bidirectional overrides: never in a text report or message.
CONTROLS = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")


# -- the inputs before damage ------------------------------------------------------------------

def spans_v1(rng: random.Random) -> list[dict[str, Any]]:
    """A request handler tree per trace: a root with keyed children, a summary, listed calls."""
    out = []
    ids = iter(range(1, 1_000_000))
    for trace in range(1, rng.randint(2, 6)):
        t = trace * 100_000
        root = next(ids)
        for j in range(rng.randint(1, 4)):
            key = rng.randint(1, 3)
            out.append(span("app.price", next(ids), t + 10 + j * 100, t + 60 + j * 100, parent=root, trace=trace,
                            args=key, ret=key + 7, cpu=rng.randint(1, 5000)))
        out.append(span("app.handle", root, t, t + 1000, trace=trace, cpu=9000, cpu_self=100,
                        extra=summary(["app.helper"], [3], cpu_total=[30]),
                        events=[calls_event("app.helper", [1, 2, 1], [t + 5, t + 6, t + 7])]))
    return out


def base_documents(rng: random.Random) -> list[dict[str, Any]]:
    kind = rng.randrange(3)
    if kind == 0:
        return [request(spans_v1(rng)), request(spans_v1(rng), pid=200, instance="inst-2")]
    if kind == 1:
        return profile_requests(spans_v1(rng))
    return [{"data": [jaeger_trace()]}]


# -- damage ------------------------------------------------------------------------------------

def nodes(document: Any) -> Iterator[tuple[Any, Any]]:
    """(container, key) of every value in a JSON document."""
    stack = [document]
    while stack:
        obj = stack.pop()
        items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
        for key, value in items:
            yield obj, key
            stack.append(value)


WRONG = [None, True, False, "", "zz", "-1", "1e400", -1, 0, 2**64, 2**70, -(2**63) - 1, 1.5, float("nan"),
         float("inf"), [], {}, [[[]]], {"intValue": "zz"}, {"arrayValue": {"values": [{}]}}, {"stringValue": 5}]


def wrong_types(rng: random.Random, documents: list[Any]) -> list[Any]:
    for document in documents:
        places = list(nodes(document))
        for _ in range(rng.randint(1, 3)):
            container, key = rng.choice(places)
            container[key] = copy.deepcopy(rng.choice(WRONG))
    return documents


NUMERIC_KEYS = ("startTimeUnixNano", "endTimeUnixNano", "intValue", "startTime", "duration")


def impossible_times(rng: random.Random, documents: list[Any]) -> list[Any]:
    """End before start, negative times, CPU, durations, counts; self CPU above total; bad gamma."""
    for document in documents:
        for container, key in list(nodes(document)):
            value = container[key]
            if rng.random() > 0.3:
                continue
            if key == "endTimeUnixNano" and "startTimeUnixNano" in container:
                container[key] = str(int(container["startTimeUnixNano"]) - rng.randint(1, 10**9))
            elif key in NUMERIC_KEYS and isinstance(value, (int, str)):
                container[key] = str(-rng.randint(1, 10**12)) if isinstance(value, str) else -rng.randint(1, 10**6)
            elif key == "doubleValue":
                container[key] = rng.choice([-1.0, -1e300, float("nan"), float("inf"), 0.5])
    return documents


def parent_cycles(rng: random.Random, documents: list[Any]) -> list[Any]:
    """Spans that are their own parent, or each other's."""
    for document in documents:
        spans = [c[k] for c, k in nodes(document) if isinstance(c[k], dict) and "spanId" in c[k]]
        rng.shuffle(spans)
        for a, b in zip(spans[::2], spans[1::2], strict=False):
            a["parentSpanId"], b["parentSpanId"] = b["spanId"], a["spanId"]
            a["traceId"] = b["traceId"]
        if spans:
            spans[0]["parentSpanId"] = spans[0]["spanId"]
    return documents


def deep_nesting(rng: random.Random, documents: list[Any]) -> list[Any]:
    """A chain of spans thousands deep, or JSON nested deeper than any parser's stack."""
    if rng.random() < 0.5:
        depth = rng.choice([500, 3000])
        chain = [span("app.recurse", i, i, 2 * depth - i, parent=i - 1 if i > 1 else None, cpu=2 * (depth - i) + 1,
                      cpu_self=1) for i in range(1, depth + 1)]
        return [*documents, request(chain)]
    container, key = rng.choice(list(nodes(documents[0])))
    container[key] = {"arrayValue": {"values": DEEP}} if rng.random() < 0.5 else DEEP
    return documents


DEEP = "@@deep@@"  # replaced in the encoded text by JSON nested deeper than json.dumps could write


def encode(documents: list[Any], rng: random.Random | None = None) -> bytes:
    data = lines(documents)
    if rng is not None and DEEP.encode() in data:
        depth = rng.choice([100, 5000, 100_000])
        data = data.replace(f'"{DEEP}"'.encode(), b"[" * depth + b'"x"' + b"]" * depth)
    return data


def hostile_names(rng: random.Random, documents: list[Any]) -> list[Any]:
    """Function names, files and services carrying escape sequences, newlines, bidi overrides."""
    evil = ["\x1b[2J\x1b[H", "\x1b]0;owned\x07", "\nfake line", "\u202eevil", "\x9b31m", "\r\x08\x00", "\u2028\u200fx"]
    for document in documents:
        for container, key in list(nodes(document)):
            if key in ("stringValue", "name", "operationName", "serviceName") and isinstance(container[key], str):
                if rng.random() < 0.5:
                    container[key] = container[key] + rng.choice(evil) + container[key]
    return documents


def truncated(rng: random.Random, data: bytes) -> bytes:
    return data[:rng.randrange(len(data))]


def flipped(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 12)):
        position = rng.randrange(len(out))
        out[position] = rng.randrange(256) if rng.random() < 0.5 else out[position] ^ (1 << rng.randrange(8))
    return bytes(out)


def gzip_damaged(rng: random.Random, data: bytes) -> bytes:
    packed = bytearray(gzip.compress(data))
    how = rng.randrange(3)
    if how == 0:
        return bytes(packed[:rng.randrange(2, len(packed))])
    if how == 1:
        position = rng.randrange(10, len(packed))
        packed[position] ^= 1 << rng.randrange(8)
        return bytes(packed)
    packed[-8:-4] = bytes(4)  # a wrong CRC
    return bytes(packed)


# A mutation: (rng, documents, a directory for its files) -> the paths to analyze.
Mutation = Callable[[random.Random, list[Any], Path], list[str]]


def _file(directory: Path, data: bytes, name: str = "traces.jsonl") -> list[str]:
    path = directory / name
    path.write_bytes(data)
    return [str(path)]


def hostile_directory(rng: random.Random, documents: list[Any], directory: Path) -> list[str]:
    """A directory of traces holding a FIFO, dangling links, a link loop and a directory named
    like trace files; sometimes the FIFO or a dangling link is named directly."""
    _file(directory, encode(documents), "good.jsonl")
    os.mkfifo(directory / "pipe.jsonl")
    os.symlink(directory / "missing.json", directory / "dangling.json")
    os.symlink(directory / "loop.json", directory / "loop.json")
    (directory / "sub.jsonl").mkdir()
    named = rng.choice([[], ["pipe.jsonl"], ["dangling.json"], ["loop.json"], ["sub.jsonl"]])
    return [str(directory), *(str(directory / n) for n in named)]


MUTATIONS: dict[str, Mutation] = {
    "truncation": lambda rng, docs, d: _file(d, truncated(rng, encode(docs))),
    "byte flips": lambda rng, docs, d: _file(d, flipped(rng, encode(docs))),
    "wrong types": lambda rng, docs, d: _file(d, encode(wrong_types(rng, docs))),
    "impossible times": lambda rng, docs, d: _file(d, encode(impossible_times(rng, docs))),
    "parent cycles": lambda rng, docs, d: _file(d, encode(parent_cycles(rng, docs))),
    "deep nesting": lambda rng, docs, d: _file(d, encode(deep_nesting(rng, docs), rng)),
    "gzip damage": lambda rng, docs, d: _file(d, gzip_damaged(rng, encode(docs)), "traces.jsonl.gz"),
    "hostile directory": hostile_directory,
    "hostile names": lambda rng, docs, d: _file(d, encode(hostile_names(rng, docs))),
}


# -- what must hold ----------------------------------------------------------------------------

RATIOS = ("share", "hit_ratio", "hit_ratio_at_128", "hit_ratio_at_recommended")
NOT_TOTALS = ("line", "pid", "schema", "schema_versions")  # numbers from the input shown as they are, not totals


def check_numbers(value: Any, where: str = "") -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if key in RATIOS and isinstance(item, (int, float)):
                assert 0 <= item <= 1, f"{where}.{key} = {item}"
            if key not in NOT_TOTALS:
                check_numbers(item, f"{where}.{key}")
    elif isinstance(value, list):
        if where.endswith(".curve"):
            assert all(0 <= ratio <= 1 for _, ratio in value), f"{where}: {value}"
        for i, item in enumerate(value):
            check_numbers(item, f"{where}[{i}]")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        assert value >= 0, f"{where} = {value}"
        assert value == value and value != float("inf"), f"{where} = {value}"


@pytest.mark.parametrize("case", range(CASES))
def test_damaged_input(case: int, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory,
                       capsys: pytest.CaptureFixture[str]) -> None:
    rng = random.Random(SEED * 1_000_003 + case)
    name = list(MUTATIONS)[case % len(MUTATIONS)]
    paths = MUTATIONS[name](rng, base_documents(rng), tmp_path)
    text = name == "hostile names" or rng.random() < 0.2
    args = ["analyze", *paths, "--report", "all", "--format", "text" if text else "json", "--lookup-ns", "50",
            "--jobs", "1", "--no-progress", "--top", "50"]
    if not text and rng.random() < 0.3:
        args += ["--memory-mb", "0"]
    folded = tmp_path_factory.mktemp("out") / "out.folded"  # not in tmp_path: a directory analyzed
    if text:
        args += ["--folded", str(folded)]
    try:
        code = main(args)
    except BaseException as exc:  # what the user would see as a traceback
        pytest.fail(f"seed {SEED} case {case} ({name}): {type(exc).__name__}: {exc}"[:2000])
    out, err = capsys.readouterr()
    context = f"seed {SEED} case {case} ({name}): exit {code}\n{err[:2000]}"
    assert code in (0, 2), context
    assert "Traceback" not in err, context
    assert not CONTROLS.search(err), context
    if code == 2:
        assert err.count("\n") == 1 and err.startswith("callspan: error: "), context
        return
    if text:
        assert not CONTROLS.search(out), context
        assert not CONTROLS.search(folded.read_text()), context
        if name == "hostile names":  # and the HTML report
            assert main(["html" if arg == "text" else arg for arg in args]) == 0, context
            assert not CONTROLS.search(capsys.readouterr().out), context
    else:
        check_numbers(json.loads(out))
