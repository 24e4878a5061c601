"""Reports: the JSON schema matches docs/analysis-json.md, text fits 100 columns, HTML is safe."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import pytest

from callspan.analysis import report
from callspan.analysis.cli import add_analyze_arguments, analyze, render
from tests.analysis.otlp_fixtures import SRC, calls_event, key_sequence_spans, request, span, summary, write

DOC = Path(SRC).parent / "docs" / "analysis-json.md"


def results_for(tmp_path: Path, *extra: str, spans: list[dict[str, Any]] | None = None) -> Any:
    if spans is None:
        long = "package.subpackage.module.SomeVeryLongClassNameForTesting.method_with_a_long_name"
        spans = key_sequence_spans(long, [1, 2, 1, 2, 3] * 4, cpu=3_000_000, extra={"callspan.method": True})
        spans += key_sequence_spans("m.co", [1, 1], first_id=500, cpu=2_000_000, kind="coroutine")
        spans.append(span("m.root", 900, 0, 10_000, cpu=5_000_000,
                          extra=summary(["m.g"], [3], cpu_total=[30_000]),
                          events=[calls_event("m.g", [4, 4, 4], [1, 2, 3], cpu=10_000)]))
    path = write(str(tmp_path / "t.jsonl"), [request(spans)])
    parser = argparse.ArgumentParser()
    add_analyze_arguments(parser)
    return analyze(parser.parse_args([path, "--report", "all", *extra]))


def doc_fields(section_heading: str, after: str | None = None) -> set[str]:
    """Backticked names in the first column of the first table after a heading (and marker)."""
    text = DOC.read_text()
    start = text.index(section_heading)
    if after:
        start = text.index(after, start)
    table = text[text.index("| field |", start):]
    names: set[str] = set()
    for row in table.splitlines()[2:]:
        if not row.startswith("|"):
            break
        names.update(re.findall(r"`([a-z_0-9]+)`", row.split("|")[1]))
    return names


def test_json_matches_the_documented_schema(tmp_path: Path) -> None:
    doc = report.render_json_object(results_for(tmp_path))
    assert doc_fields("## `input`") == set(doc["input"])
    assert doc_fields("## `cache`") == set(doc["cache"])
    ops = doc["cache"]["opportunities"]
    assert ops
    for op in ops:
        assert doc_fields("## `cache`", "Each opportunity") == set(op)
        assert doc_fields("## `cache`", "`savings`:") == set(op["savings"])
        assert set(op["advice"]) == {"kind", "text", "paste"}
    kinds = re.findall(r"^\| `([a-z_]+)` \|", DOC.read_text(), re.M)
    assert {op["advice"]["kind"] for op in ops} <= set(kinds)
    assert set(report.ADVICE_LABELS) <= set(kinds)
    assert doc_fields("## `cpu`") == set(doc["cpu"])
    assert set(doc["cpu"]["stacks"][0]) == {"stack", "self", "total", "calls"}
    documented = doc_fields("## `latency`")
    for row in doc["latency"]["functions"]:
        assert set(row) == documented | {"function", "file", "line", "kind"}
    assert set(doc["latency"]["slowest"][0]) == {"function", "file", "line", "wall_ns", "start_ns", "trace_id",
                                                 "span_id", "stack"}
    assert set(doc) == {"schema", "generator", "input", "reports", "cache", "cpu", "latency"}


def test_text_fits_100_columns_with_long_names(tmp_path: Path) -> None:
    text = render(results_for(tmp_path), "text")
    assert "a method: self is part of the key" in text
    long_lines = [line for line in text.splitlines() if len(line) > 100]
    assert all(line.lstrip().startswith("@functools.lru_cache") for line in long_lines), long_lines


def test_html_escapes_names(tmp_path: Path) -> None:
    spans = key_sequence_spans("m.<script>alert(1)</script>", [1, 1, 1], cpu=3_000_000)
    page = render(results_for(tmp_path, spans=spans), "html")
    assert "<script>alert" not in page and "alert(1)</script>" not in page
    assert page.count("<script") == page.count("</script>") == 2  # the flame graph's data and code
    assert "m.&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_curve_svg_marks_sizes() -> None:
    op: Any = type("Op", (), {"name": "f", "curve": [(1, 0.25), (4, 0.5), (300, 0.9)],
                              "recommended_maxsize": 300})()
    svg = report.curve_svg(op)
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert "rec. 300" in svg and ">128<" in svg
    path = re.search(r'<path d="([^"]+)"', svg)
    assert path is not None and path.group(1).count("V") == 3  # one rise per curve point


@pytest.mark.parametrize("value,text", [(999, "999 ns"), (1500, "1.5 us"), (2_500_000, "2.5 ms"),
                                        (3_210_000_000, "3.21 s")])
def test_fmt_ns(value: float, text: str) -> None:
    assert report.fmt_ns(value) == text


def test_elide_stack_keeps_root_and_leaf() -> None:
    frames = [f"module.function_{i}" for i in range(10)]
    text = report.elide_stack(frames, 60)
    assert len(text) <= 60 and text.startswith("module.function_0 > ... >") and text.endswith("function_9")
