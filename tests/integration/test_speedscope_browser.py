"""The speedscope export (`callspan analyze --speedscope`) loaded into speedscope's own built app
(the `speedscope` npm package, installed by scripts/browser-test-deps.sh) in headless Chromium.

speedscope reads the file itself: its sandwich view must list each function with the self and
total share the known trace gives it. Skips without the app (CALLSPAN_SPEEDSCOPE_APP).
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_report_browser import known_trace

APP_ENV = "CALLSPAN_SPEEDSCOPE_APP"


@pytest.fixture
def speedscope_site(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """speedscope's app served from a copy on 127.0.0.1: (base URL, the served directory)."""
    app = os.environ.get(APP_ENV, "").strip()
    if not app:
        pytest.skip(f"{APP_ENV} is not set: run scripts/browser-test-deps.sh (npm install speedscope) and "
                    "export what it prints")
    if not (Path(app) / "index.html").is_file():
        pytest.fail(f"{APP_ENV}={app} has no index.html", pytrace=False)
    site = tmp_path / "site"
    shutil.copytree(app, site)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", site
    finally:
        server.shutdown()
        server.server_close()


def test_speedscope_reads_the_export_as_written(browser: Any, speedscope_site: tuple[str, Path],
                                                tmp_path: Path) -> None:
    base, site = speedscope_site
    source = known_trace(tmp_path / "known.jsonl")
    result = subprocess.run([sys.executable, "-m", "callspan", "analyze", "--report", "cpu", "--no-progress",
                             "--speedscope", str(site / "profile.json"), str(source)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    browser.get(f"{base}/index.html#profileURL={base}/profile.json")
    browser.wait(lambda: browser.js("return document.title") == "callspan: CPU by call stack - speedscope", 20,
                 "speedscope to load the profile")
    browser.js("""[...document.querySelectorAll('div, span')].find(e => e.children.length <= 2
                  && e.textContent.trim().endsWith('Sandwich') && e.textContent.length < 20).click()""")
    rows = browser.wait(lambda: browser.js("""
        return [...document.querySelectorAll('table tr')].slice(1).map(r => {
            const cells = r.querySelectorAll('td');
            return [cells[2].textContent, parseFloat(cells[0].querySelector('[style]').style.width),
                    parseFloat(cells[1].querySelector('[style]').style.width), cells[2].title];
        });"""), 10, "the sandwich table")
    # Shares of the 8 ms of self CPU: (total %, self %) per function, and its file.
    got = {name: (round(total, 3), round(self_share, 3), file) for name, total, self_share, file in rows}
    assert got == {
        "app.handler": (100.0, 12.5, "/app/app.py"),
        "app.fetch_all": (50.0, 12.5, "/app/app.py"),
        "app.fetch": (37.5, 37.5, "/app/app.py"),
        "app.render": (37.5, 25.0, "/app/app.py"),
        "app.escape": (12.5, 12.5, "/app/app.py"),
    }
    # The unit is read as nanoseconds: 8 ms of CPU under the root.
    assert "8.00ms (100%)" in browser.js("return document.body.innerText")
    assert browser.console_errors() == []
