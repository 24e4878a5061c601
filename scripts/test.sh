#!/usr/bin/env bash
# The test command (README, .ci/run): the whole suite on every supported Python, 3.11-3.13,
# each in its own virtual environment with callspan installed from this checkout. End-to-end
# tests need the real OpenTelemetry Collector and Jaeger: they are built (or reused) first.
# Extra arguments go to pytest.
set -u
# The compiled hot path must build here (setup.py makes a failed build an error with this set).
export CALLSPAN_REQUIRE_EXTENSION=1
cd "$(dirname "$0")/.."

if command -v go >/dev/null 2>&1 && [ -f scripts/build-otel-binaries.sh ]; then
  if bins=$(bash scripts/build-otel-binaries.sh); then
    while IFS= read -r line; do
      case "$line" in CALLSPAN_OTELCOL_BIN=*|CALLSPAN_JAEGER_BIN=*) export "${line?}";; esac
    done <<< "$bins"
  else
    echo "test.sh: building the Collector/Jaeger binaries failed; end-to-end tests will be skipped" >&2
    [ "${CI:-}" = "true" ] && exit 1
  fi
else
  echo "test.sh: Go not found: end-to-end tests will be skipped (install Go, then rerun)" >&2
fi

# Browser tests: Debian's chromium + chromedriver (installed when absent, as root), speedscope's
# built app, and the real Jaeger UI, built from its source once (CALLSPAN_JAEGER_UI_SRC) and
# cached; without them those tests skip and say how to get them.
if deps=$(bash scripts/browser-test-deps.sh); then
  while IFS= read -r line; do
    case "$line" in CALLSPAN_SPEEDSCOPE_APP=*) export "${line?}";; esac
  done <<< "$deps"
fi
ui=$(bash scripts/build-jaeger-ui.sh)
case $? in
  0) case "$ui" in CALLSPAN_JAEGER_UI_ASSETS=*) export "${ui?}";; esac ;;
  3) echo "test.sh: no Jaeger UI build and no CALLSPAN_JAEGER_UI_SRC: the Jaeger UI tests will be skipped" >&2 ;;
  *) echo "test.sh: building the Jaeger UI failed; the Jaeger UI tests will be skipped" >&2
     [ "${CI:-}" = "true" ] && exit 1 ;;
esac

find_python() {
  local version=$1 candidate
  for candidate in "python$version" "$HOME/.pyenv/versions/$version"*/bin/python; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c "import sys; assert sys.version_info[:2] == tuple(map(int, '$version'.split('.')))" 2>/dev/null; then
      command -v "$candidate"
      return 0
    fi
  done
  return 1
}

status=0
missing=""
for version in 3.11 3.12 3.13; do
  if ! python=$(find_python "$version"); then
    echo "test.sh: Python $version NOT FOUND: not tested" >&2
    missing="$missing $version"
    continue
  fi
  venv=".venv-$version"
  echo "=== Python $version ($python) ==="
  if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv" || { status=1; continue; }
  fi
  extras="test"
  [ "$version" = "3.12" ] && extras="test,dev"  # lint once
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -e ".[$extras]" || { status=1; continue; }
  "$venv/bin/python" -m pytest -q -p no:cacheprovider "$@"
  code=$?
  [ $code -ne 0 ] && status=1
  if [ "$version" = "3.12" ]; then
    "$venv/bin/ruff" check src tests benchmarks || status=1
    "$venv/bin/mypy" src || status=1
  fi
done

if [ -n "$missing" ]; then
  echo "test.sh: missing Python versions:$missing" >&2
  status=1
fi
exit $status
