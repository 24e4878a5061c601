"""Fixtures that run the real Collector and Jaeger binaries (see otelbins.py).

Build them once, then run the tests::

    set -a; eval "$(scripts/build-otel-binaries.sh)"; set +a
    python -m pytest tests/integration -q

Without CALLSPAN_OTELCOL_BIN / CALLSPAN_JAEGER_BIN the tests that need them skip.

Fixtures (function-scoped, each on its own free ports and tmp dir):

* ``otelcol_bin`` / ``jaeger_bin``: paths of the binaries (skip when unset).
* ``jaeger``: a running Jaeger (``otelbins.Jaeger``).
* ``otelcol``: a running collector (``otelbins.Collector``). When the same test
  also asks for ``jaeger`` (or ``jaeger_ui``), the collector forwards to that Jaeger;
  otherwise it forwards to a port with nothing behind it and only the file output matters.
* ``jaeger_ui``: a running Jaeger serving the real Jaeger UI (skips without a UI build:
  scripts/build-jaeger-ui.sh, CALLSPAN_JAEGER_UI_ASSETS).
* ``browser``: a headless Chromium driven by Selenium (``browser.Browser``; skips without
  chromium/chromedriver).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:  # so that `import otelbins` works in any pytest import mode
    sys.path.insert(0, _HERE)

import browser as browser_module  # noqa: E402
import otelbins  # noqa: E402


@pytest.fixture(scope="session")
def otelcol_bin() -> Path:
    return otelbins.otelcol_binary()


@pytest.fixture(scope="session")
def jaeger_bin() -> Path:
    return otelbins.jaeger_binary()


@pytest.fixture
def jaeger(jaeger_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[otelbins.Jaeger]:
    with otelbins.start_jaeger(jaeger_bin, tmp_path_factory.mktemp("jaeger")) as instance:
        yield instance


@pytest.fixture
def jaeger_ui(jaeger_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[otelbins.Jaeger]:
    assets = otelbins.jaeger_ui_assets()
    with otelbins.start_jaeger(jaeger_bin, tmp_path_factory.mktemp("jaeger-ui"), ui_assets=assets) as instance:
        yield instance


@pytest.fixture
def browser() -> Iterator[browser_module.Browser]:
    with browser_module.chromium() as instance:
        yield instance


@pytest.fixture
def otelcol(
    otelcol_bin: Path, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[otelbins.Collector]:
    jaeger_endpoint: str | None = None
    for name in ("jaeger", "jaeger_ui"):
        if name in request.fixturenames:
            jaeger_instance: otelbins.Jaeger = request.getfixturevalue(name)
            jaeger_endpoint = jaeger_instance.otlp_grpc_endpoint
    workdir = tmp_path_factory.mktemp("otelcol")
    instance = otelbins.start_collector(otelcol_bin, workdir, jaeger_endpoint=jaeger_endpoint)
    try:
        yield instance
    finally:
        instance.stop()
