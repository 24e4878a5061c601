"""callspan's traces in the real Jaeger UI (jaeger-ui v1.76.0 built from its source by
scripts/build-jaeger-ui.sh, served by the Go-built Jaeger), in headless Chromium.

`callspan run --otlp` → the real Collector → real Jaeger → the UI, used as a person would: search
the service, open the trace, read the span tree and a span's tags, open the aggregates
(`callspan.profile`) and a trace at the per-trace span budget. No console errors anywhere.
Skipped, saying how to get them, without the binaries, the UI build or Chromium. With
CALLSPAN_SCREENSHOTS=DIR the trace view is saved there (docs/images/ holds the README's).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import otelbins  # type: ignore[import-not-found]

from callspan.otel.bridge import PROFILE_CHUNK_ROWS

DEMO = Path(__file__).resolve().parents[2] / "src" / "callspan" / "demo" / "shop.py"
SCREENSHOTS_ENV = "CALLSPAN_SCREENSHOTS"
SPAN_BUDGET = 2000  # CALLSPAN_MAX_SPANS_PER_TRACE's default

# One trace past the per-trace budget (1 + 3 x 1,200 + ... calls), and 40 x 60 distinct stacks
# through 100 more functions (module many.py): aggregates of several full callspan.profile chunks.
BUDGET_PROGRAM = textwrap.dedent('''
    import many

    def leaf(i):
        return i * 2

    def mid(i):
        return leaf(i) + leaf(i + 1)

    def root():
        total = 0
        for i in range(1200):
            total += mid(i)
        return total + sum(caller(1) for caller in many.CALLERS)

    root()
''')
MANY_FUNCTIONS = "".join(
    [f"def callee_{k}(x):\n    return x + {k}\n\n\n" for k in range(60)]
    + [f"def caller_{k}(x):\n    return sum(callee(x) for callee in CALLEES)\n\n\n" for k in range(40)]
    + ["CALLEES = [" + ", ".join(f"callee_{k}" for k in range(60)) + "]\n",
       "CALLERS = [" + ", ".join(f"caller_{k}" for k in range(40)) + "]\n"])


def run_traced(target: Path, collector: Any, cwd: Path, service: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "CALLSPAN_"))}
    env.update(OTEL_SERVICE_NAME=service, CALLSPAN_MAX_SPANS_PER_SECOND="100000")
    result = subprocess.run([sys.executable, "-m", "callspan", "run", "--otlp", f"http://{collector.grpc_endpoint}",
                             str(target)], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "not exported" not in result.stderr, result.stderr


def traces_of(jaeger: Any, service: str, operation: str) -> list[dict[str, Any]]:
    status, body = otelbins.http_get_json(f"{jaeger.query_url}/api/traces?service={service}"
                                          f"&operation={operation}&limit=20")
    return body.get("data") or [] if status == 200 else []


def wait_for_root(jaeger: Any, service: str, operation: str, spans: int | None = None,
                  containing: str = "") -> dict[str, Any]:
    """A trace of ``operation`` (at least ``spans`` spans, a tag value containing ``containing``)."""
    def probe() -> dict[str, Any] | None:
        for trace in traces_of(jaeger, service, operation):
            if spans is not None and len(trace["spans"]) < spans:
                continue
            if containing and not any(containing in str(t["value"]) for s in trace["spans"] for t in s["tags"]):
                continue
            return trace
        return None

    return otelbins.wait_until(probe, timeout=60, interval=0.5, what=f"a {operation} trace of {service} in Jaeger")


def tag(trace: dict[str, Any], key: str) -> list[Any]:
    """An array tag of a trace's first span (Jaeger's v1 JSON has arrays as JSON strings)."""
    value = next((t["value"] for t in trace["spans"][0]["tags"] if t["key"] == key), "[]")
    return json.loads(value) if isinstance(value, str) else list(value)


def search(browser: Any, jaeger: Any, service: str) -> list[str]:
    """Pick the service in the search form, press "Find Traces": the result titles."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    browser.get(f"{jaeger.query_url}/search")
    browser.wait(lambda: browser.js("return document.querySelector('.SearchForm--submit')"), 30, "the search form")
    browser.driver.find_elements("css selector", ".ant-form-item .ant-select")[0].click()
    ActionChains(browser.driver).send_keys(service).send_keys(Keys.ENTER).perform()
    browser.wait(lambda: service in browser.js("return document.querySelector('.ant-form-item .ant-select').textContent"),
                 10, f"{service} to be chosen")
    browser.js("document.querySelector('.SearchForm--submit').click()")
    return browser.wait(lambda: browser.js(
        "return [...document.querySelectorAll('.ResultItemTitle--title')].map(e => e.textContent)"), 30,
        "search results")  # type: ignore[no-any-return]


def open_result(browser: Any, operation: str) -> None:
    browser.js("""[...document.querySelectorAll('.ResultItemTitle')]
                  .find(e => e.querySelector('.ResultItemTitle--title').textContent.includes(arguments[0]))
                  .querySelector('.ResultItemTitle--title').click()""", f": {operation}")


def span_rows(browser: Any) -> list[tuple[str, int]]:
    """The rows of the trace timeline that are drawn: (operation, depth in the span tree; the
    UI draws one indent guide per level, the root's included)."""
    rows = browser.js("""return [...document.querySelectorAll('.span-row')].map(r => [
        r.querySelector('.endpoint-name').textContent,
        r.querySelectorAll('.SpanTreeOffset--indentGuide').length])""")
    return [(name, guides - 1) for name, guides in rows]


def open_span(browser: Any, operation: str) -> dict[str, str]:
    """Click the first row of ``operation``, open its Tags: key -> value as the UI shows them."""
    browser.js("""[...document.querySelectorAll('.span-row')]
                  .find(r => r.querySelector('.endpoint-name').textContent === arguments[0])
                  .querySelector('.span-name').click()""", operation)
    browser.wait(lambda: browser.js("return document.querySelector('.detail-row .AccordianKeyValues--header')"),
                 10, f"the details of {operation}")
    browser.js("document.querySelector('.detail-row .AccordianKeyValues--header').click()")
    return browser.wait(lambda: browser.js("""
        const rows = document.querySelectorAll('.detail-row .KeyValueTable--row');
        return rows.length ? Object.fromEntries([...rows].map(r =>
            [r.querySelector('.KeyValueTable--keyColumn').textContent,
             r.querySelector('.KeyValueTable--valueColumn .json-markup').textContent])) : null;"""), 10,
        f"the tags of {operation}")  # type: ignore[no-any-return]


def test_demo_trace_in_the_jaeger_ui(jaeger_ui: Any, otelcol: Any, browser: Any, tmp_path: Path) -> None:
    run_traced(DEMO, otelcol, tmp_path, "callspan-demo")
    trace = wait_for_root(jaeger_ui, "callspan-demo", "__main__.main")
    total = len(trace["spans"])

    titles = search(browser, jaeger_ui, "callspan-demo")
    assert any(t.startswith("callspan-demo: __main__.main") for t in titles), titles
    assert any(t.startswith("callspan-demo: callspan.profile") for t in titles), titles
    open_result(browser, "__main__.main")
    browser.wait(lambda: "/trace/" in browser.driver.current_url and browser.js(
        "return document.querySelectorAll('.span-row').length"), 20, "the trace view")
    header = browser.js("return document.querySelector('.TracePageHeader--overviewItems').textContent")
    assert f"TotalSpans{total}" in header.replace(" ", ""), header
    assert browser.driver.current_url.endswith(trace["traceID"])

    rows = span_rows(browser)
    assert rows[0] == ("__main__.main", 0)
    # Each gathered inventory() coroutine is a child of the handle_checkout (or handle_browse)
    # coroutine that awaited it: the nearest row above one level up.
    inventories = 0
    for index, (name, depth) in enumerate(rows):
        if name == "__main__.inventory":
            parent = next(n for n, d in reversed(rows[:index]) if d == depth - 1)
            assert parent in ("__main__.handle_checkout", "__main__.handle_browse"), (index, parent)
            assert depth == 2
            inventories += 1
    assert inventories >= 3
    checkout = rows.index(("__main__.handle_checkout", 1))
    assert [n for n, _ in rows[checkout + 1:checkout + 8]].count("__main__.inventory") == 3

    where = os.environ.get(SCREENSHOTS_ENV)
    if where:
        browser.screenshot(Path(where) / "jaeger-trace.png", 1280, 720)

    tags = open_span(browser, "__main__.inventory")
    assert {"callspan.cpu.total", "callspan.cpu.self", "callspan.await.count", "callspan.await.suspended_ns",
            "callspan.args.hash", "callspan.return.hash", "code.function.name"} <= set(tags), sorted(tags)
    assert tags["callspan.await.count"] == "1" and tags["code.function.name"] == "__main__.inventory"
    assert len(tags["callspan.args.hash"]) == 16 and int(tags["callspan.args.hash"], 16) >= 0
    if where:
        browser.driver.set_window_size(1280, 900)
        # The row above the details (the span itself) just below the UI's sticky header.
        browser.js("""const row = document.querySelector('.detail-row');
            let box = row.parentElement;
            while (box && !(box.scrollHeight > box.clientHeight && getComputedStyle(box).overflowY !== 'visible'))
                box = box.parentElement;
            (box || document.scrollingElement).scrollTop += row.getBoundingClientRect().top - 290;""")
        browser.screenshot(Path(where) / "jaeger-span-tags.png", 1280, 900)
    assert browser.console_errors() == []


def test_budget_trace_and_aggregates_render_quickly(jaeger_ui: Any, otelcol: Any, browser: Any,
                                                    tmp_path: Path) -> None:
    program = tmp_path / "budget.py"
    program.write_text(BUDGET_PROGRAM)
    (tmp_path / "many.py").write_text(MANY_FUNCTIONS)
    run_traced(program, otelcol, tmp_path, "callspan-budget")
    trace = wait_for_root(jaeger_ui, "callspan-budget", "__main__.root", SPAN_BUDGET)
    assert len(trace["spans"]) == SPAN_BUDGET
    # The fullest chunk of the aggregates (PROFILE_CHUNK_ROWS rows, most of them nodes).
    chunks = otelbins.wait_until(lambda: [t for t in traces_of(jaeger_ui, "callspan-budget", "callspan.profile")
                                          if "many.callee_59" in str(t)] or None,
                                 timeout=60, interval=0.5, what="the callspan.profile spans")
    profile = max(chunks, key=lambda t: len(tag(t, "callspan.profile.node.id")))
    nodes = len(tag(profile, "callspan.profile.node.id"))
    assert nodes >= PROFILE_CHUNK_ROWS - 200  # a full chunk, less the functions it carries

    browser.get(f"{jaeger_ui.query_url}/search")  # the app is loaded and cached: time the trace alone
    browser.wait(lambda: browser.js("return document.querySelector('.SearchForm--submit')"), 30, "the search form")
    started = time.monotonic()
    browser.get(f"{jaeger_ui.query_url}/trace/{trace['traceID']}")
    browser.wait(lambda: f"TotalSpans{SPAN_BUDGET}" in (browser.js(
        "const h = document.querySelector('.TracePageHeader--overviewItems'); return h ? h.textContent : ''")
        or "").replace(" ", "") and browser.js("return document.querySelectorAll('.span-row').length > 20"),
        30, "the budget trace to render")
    elapsed = time.monotonic() - started
    assert elapsed < 5, f"a {SPAN_BUDGET}-span trace took {elapsed:.1f}s to render"
    assert span_rows(browser)[0] == ("__main__.root", 0)
    # Still responsive: scroll to the end and back.
    started = time.monotonic()
    browser.js("window.scrollTo(0, document.body.scrollHeight)")
    browser.js("window.scrollTo(0, 0)")
    assert time.monotonic() - started < 2

    # The aggregates: one span with long array tags, opened and read without freezing the page.
    browser.get(f"{jaeger_ui.query_url}/trace/{profile['traceID']}")
    browser.wait(lambda: browser.js("return document.querySelectorAll('.span-row').length"), 20, "the profile trace")
    started = time.monotonic()
    tags = open_span(browser, "callspan.profile")
    elapsed = time.monotonic() - started
    assert elapsed < 5, f"opening the callspan.profile span took {elapsed:.1f}s"
    assert len(json.loads(tags["callspan.profile.node.id"])) == nodes
    assert {"callspan.profile.window", "callspan.profile.node.id", "callspan.profile.node.cpu_self"} <= set(tags)
    started = time.monotonic()
    assert browser.js("return 1 + 1") == 2
    assert time.monotonic() - started < 1
    assert browser.console_errors() == []
