#!/usr/bin/env bash
# What the browser tests need besides the Jaeger UI (scripts/build-jaeger-ui.sh):
#
#   chromium, chromedriver  Debian's packages; installed with apt-get when absent, if this runs
#                           as root (set CALLSPAN_NO_APT=1 to never install)
#   speedscope              its built app, from the npm package (pinned), into
#                           ${CALLSPAN_BIN_CACHE:-$HOME/.cache/callspan-bin}/speedscope-<version>/
#
# Progress and problems go to stderr; stdout gets, for what is there at the end:
#
#   CALLSPAN_SPEEDSCOPE_APP=/path/to/speedscope/dist/release
#
# A missing piece is not an error (exit 0): the tests that need it skip, saying how to get it.
set -uo pipefail

readonly SPEEDSCOPE_PKG="speedscope@1.25.0"

log() { printf '[browser-test-deps] %s\n' "$*" >&2; }

if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    if [[ "${CALLSPAN_NO_APT:-}" != 1 && "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        log "installing Debian's chromium and chromium-driver ..."
        export DEBIAN_FRONTEND=noninteractive
        if ! apt-get install -y -q chromium chromium-driver >&2; then
            apt-get update -q >&2 && apt-get install -y -q chromium chromium-driver >&2 \
                || log "could not install chromium/chromium-driver: the browser tests will be skipped"
        fi
    else
        log "chromium/chromedriver not found and not installing them (not root, or CALLSPAN_NO_APT=1): the browser tests will be skipped (apt-get install chromium chromium-driver)"
    fi
fi

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cache_dir="${CALLSPAN_BIN_CACHE:-$HOME/.cache/callspan-bin}"
case "$cache_dir" in /*) ;; *) cache_dir="$PWD/$cache_dir" ;; esac
case "$cache_dir/" in "$repo_root"/*) log "CALLSPAN_BIN_CACHE ($cache_dir) must be outside the repository"; exit 0 ;; esac
prefix="$cache_dir/speedscope-${SPEEDSCOPE_PKG#speedscope@}"
app="$prefix/node_modules/speedscope/dist/release"
if [[ ! -f "$app/index.html" ]]; then
    if command -v npm >/dev/null 2>&1; then
        log "installing $SPEEDSCOPE_PKG (its built app) from the npm registry into $prefix ..."
        mkdir -p "$prefix"
        npm install --prefix "$prefix" --no-audit --no-fund --no-save "$SPEEDSCOPE_PKG" >&2 \
            || log "could not install $SPEEDSCOPE_PKG: the speedscope test will be skipped"
    else
        log "npm not found: the speedscope test will be skipped (install npm, then rerun)"
    fi
fi
[[ -f "$app/index.html" ]] && printf 'CALLSPAN_SPEEDSCOPE_APP=%q\n' "$app"
exit 0
