"""The HTML report (`callspan analyze --format html`) in a real headless Chromium, offline.

A known trace gives known charts: the flame graph's boxes, their widths and nesting (gathered
coroutines under the coroutine that gathered them), zooming by click, the latency
distributions' bars and the cache curve. The demo's report opens without console errors; with
CALLSPAN_SCREENSHOTS=DIR its flame graph is saved there (docs/images/ holds the README's).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from callspan.analysis.cpu import CpuReport, Stacks, StackStat
from callspan.analysis.graphs import FLAME_CSS, MAX_FLAME_NODES, flame_html
from tests.analysis.otlp_fixtures import request, span, write

MS = 1_000_000
SCREENSHOTS_ENV = "CALLSPAN_SCREENSHOTS"


def known_trace(path: Path) -> Path:
    """handler > fetch_all > 3 x fetch (gathered coroutines), handler > render > escape; self CPU
    1, 1, 3 x 1, 2 and 1 ms (8 ms in all). Children end first, as exporters write them."""
    spans = [
        span("app.fetch", 3, 1_100_000, 2_100_000, parent=2, kind="coroutine", cpu=MS, args=1, ret=1001),
        span("app.fetch", 4, 1_200_000, 2_200_000, parent=2, kind="coroutine", cpu=MS, args=1, ret=1001),
        span("app.fetch", 5, 1_300_000, 5_900_000, parent=2, kind="coroutine", cpu=MS, args=2, ret=1002),
        span("app.fetch_all", 2, 1_000_000, 6_000_000, parent=1, kind="coroutine", cpu=4 * MS, cpu_self=MS),
        span("app.escape", 7, 7_000_000, 8_000_000, parent=6, cpu=MS),
        span("app.render", 6, 6_000_000, 9_500_000, parent=1, cpu=3 * MS, cpu_self=2 * MS),
        span("app.handler", 1, 0, 10_000_000, cpu=8 * MS, cpu_self=MS),
    ]
    return Path(write(str(path), [request(spans)]))


def analyze_html(source: Path, out: Path, cwd: Path) -> Path:
    result = subprocess.run([sys.executable, "-m", "callspan", "analyze", "--report", "all", "--format", "html",
                             "--lookup-ns", "100", "--no-progress", "-o", str(out), str(source)],
                            cwd=cwd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return out


def boxes(browser: Any) -> dict[str, list[dict[str, Any]]]:
    """The flame graph's drawn boxes by label: position, size and classes."""
    found = browser.js("""
        return [...document.querySelectorAll('#fg .fg-node')].map(e => ({
            name: e.textContent, left: e.offsetLeft, top: e.offsetTop, width: e.offsetWidth,
            ancestor: e.classList.contains('fg-anc'), title: e.title}));""")
    out: dict[str, list[dict[str, Any]]] = {}
    for box in found:
        out.setdefault(box["name"], []).append(box)
    return out


def click_box(browser: Any, name: str) -> None:
    browser.js("[...document.querySelectorAll('#fg .fg-node')].find(e => e.textContent === arguments[0]).click()",
               name)


def open_offline(browser: Any, page: Path) -> None:
    browser.offline()
    browser.get(page.as_uri())
    browser.wait(lambda: browser.js("return document.querySelectorAll('#fg .fg-node').length"), 10,
                 "the flame graph to be drawn")


def assert_clean(browser: Any) -> None:
    assert browser.console_errors() == []
    requested = browser.requested_urls()
    assert requested and all(url.startswith(("file:", "data:")) for url in requested), requested


def test_known_trace_report_offline(browser: Any, tmp_path: Path) -> None:
    page = analyze_html(known_trace(tmp_path / "known.jsonl"), tmp_path / "known.html", tmp_path)
    open_offline(browser, page)
    assert_clean(browser)

    drawn = boxes(browser)
    assert sorted(drawn) == ["all", "app.escape", "app.fetch", "app.fetch_all", "app.handler", "app.render"]
    assert all(len(found) == 1 for found in drawn.values())  # the three fetch calls: one stack
    box = {name: found[0] for name, found in drawn.items()}
    full = box["all"]["width"]
    # Widths: self CPU of the stack and below, out of 8 ms.
    for name, eighths in (("app.handler", 8), ("app.fetch_all", 4), ("app.fetch", 3), ("app.render", 3),
                          ("app.escape", 1)):
        assert abs(box[name]["width"] - full * eighths / 8) <= 1.5, (name, box[name]["width"], full)
    depth = {name: b["top"] // 17 for name, b in box.items()}
    assert depth == {"all": 0, "app.handler": 1, "app.fetch_all": 2, "app.render": 2, "app.fetch": 3, "app.escape": 3}
    # The gathered coroutines sit under the coroutine that gathered them.
    fetch, fetch_all = box["app.fetch"], box["app.fetch_all"]
    assert fetch_all["left"] <= fetch["left"] and fetch["left"] + fetch["width"] <= fetch_all["left"] + fetch_all["width"] + 1
    assert "3 calls" in fetch["title"] and "self 3.0 ms" in fetch["title"]
    # Self and total CPU: fetch_all's own 1 ms, 4 ms with what it ran (as its span recorded).
    assert ("CPU here and below: 4.0 ms (50.0% of all), self 1.0 ms, recorded total 4.0 ms, 1 calls"
            in fetch_all["title"]), fetch_all["title"]

    # Zoom into fetch_all: it spans the width, its ancestors dimmed above, render gone.
    click_box(browser, "app.fetch_all")
    zoomed = {name: found[0] for name, found in boxes(browser).items()}
    assert sorted(zoomed) == ["all", "app.fetch", "app.fetch_all", "app.handler"]
    assert zoomed["app.fetch_all"]["width"] == full and zoomed["all"]["ancestor"] and zoomed["app.handler"]["ancestor"]
    assert abs(zoomed["app.fetch"]["width"] - full * 3 / 4) <= 1.5
    click_box(browser, "all")  # an ancestor: zoom out to it
    assert len(boxes(browser)) == 6

    # Latency: one chart per function, a bar per non-empty bin (4 per decade): the fetch walls
    # 1, 1 and 4.6 ms fall in bins 24, 24, 26; every other function made one call.
    bars = browser.js("""
        return Object.fromEntries([...document.querySelectorAll('.dists figure')].map(f =>
            [f.querySelector('figcaption').textContent, f.querySelectorAll('rect.bar').length]));""")
    assert bars == {"app.handler": 1, "app.fetch_all": 1, "app.fetch": 2, "app.render": 1, "app.escape": 1}
    marks = browser.js("return document.querySelectorAll('.dists svg line.mark').length")
    assert marks == 3 * 5
    # Cache: app.fetch repeated an argument key; the only function with a hit-ratio curve.
    curves = browser.js("""return [...document.querySelectorAll('.fn svg title')].map(t => t.textContent)""")
    assert curves == ["app.fetch: hit ratio by cache size"]
    assert browser.console_errors() == []


def big_report(per_service: int = 99) -> CpuReport:
    """A call tree of 10 handlers x 100 services x ``per_service`` leaves (100,010 stacks by
    default), self costs falling off with the leaf's number (a long tail)."""
    table = Stacks()
    stats = []
    total = 0
    for h in range(10):
        handler = table.child(0, table.name_id(f"app.handler_{h}"))
        stats.append(StackStat(handler, 1000, 0, 1))
        for s in range(100):
            service = table.child(handler, table.name_id(f"app.service_{s}"))
            stats.append(StackStat(service, 100, 0, 1))
            for leaf in range(per_service):
                stack = table.child(service, table.name_id(f"lib.leaf_{leaf}"))
                cost = 1_000_000 // (leaf + 1)
                stats.append(StackStat(stack, cost, cost, 1))
                total += cost
    return CpuReport("cpu", "ns", total, stats, table, {}, 0, 0, {})


def test_flame_graph_of_100k_stacks_is_readable_and_quick(browser: Any, tmp_path: Path) -> None:
    report = big_report()
    assert len(report.stacks) == 100_010
    page = tmp_path / "big.html"
    page.write_text(f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>big</title>"
                    f"<style>{FLAME_CSS}</style></head><body>{flame_html(report)}</body></html>")
    browser.offline()
    started = time.monotonic()
    browser.get(page.as_uri())
    drawn = browser.wait(lambda: browser.js("return document.querySelectorAll('#fg .fg-node').length"), 10,
                         "the flame graph to be drawn")
    elapsed = time.monotonic() - started
    assert elapsed < 5, f"drawing took {elapsed:.1f}s"
    assert_clean(browser)
    # At most MAX_FLAME_NODES stacks plus one tail box per parent that lost children, and only
    # boxes of half a pixel or more are drawn.
    assert 100 < drawn <= MAX_FLAME_NODES + 1 + 1010
    tails = browser.js("return [...document.querySelectorAll('#fg .fg-tail')].map(e => e.title)")
    assert tails and all("narrower stacks folded together" in t for t in tails)
    # Zooming into a handler redraws quickly.
    started = time.monotonic()
    click_box(browser, "app.handler_0")
    assert time.monotonic() - started < 2
    assert browser.js("return document.querySelector('#fg .fg-node:not(.fg-anc)').textContent") == "app.handler_0"


def test_demo_report_opens_clean(browser: Any, tmp_path: Path) -> None:
    demo = subprocess.run([sys.executable, "-m", "callspan", "demo", "-o", "demo.jsonl"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "CALLSPAN_"))})
    assert demo.returncode == 0, demo.stderr
    page = analyze_html(tmp_path / "demo.jsonl", tmp_path / "demo.html", tmp_path)
    open_offline(browser, page)
    assert_clean(browser)
    drawn = boxes(browser)
    # The demo gathers inventory() coroutines in handle_checkout: they are drawn below it.
    checkout = drawn["__main__.handle_checkout"]
    assert len(checkout) == 1
    inside = [b for b in drawn["__main__.inventory"] if b["top"] == checkout[0]["top"] + 17
              and checkout[0]["left"] <= b["left"] < checkout[0]["left"] + checkout[0]["width"]]
    assert len(inside) == 1 and "180 calls" in inside[0]["title"]  # 60 checkouts x 3 items
    # One distribution per function of the latency table (its rows but the header).
    figures, rows = browser.js("""return [document.querySelectorAll('.dists figure').length,
        document.getElementById('latency').rows.length - 1]""")
    assert figures == rows > 5
    where = os.environ.get(SCREENSHOTS_ENV)
    if where:
        browser.js("window.scrollTo(0, [...document.querySelectorAll('h2')].find(h => h.textContent === "
                   "'CPU by call stack').getBoundingClientRect().top + window.scrollY - 10)")
        browser.screenshot(Path(where) / "report-flame-graph.png", 1100, 560)
        click_box(browser, "__main__.handle_checkout")
        browser.js("document.querySelector('.dists').scrollIntoView()")
        browser.screenshot(Path(where) / "report-latency.png", 1100, 520)
    assert browser.console_errors() == []
