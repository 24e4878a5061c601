# Sourced by the build scripts (build-otel-binaries.sh, build-jaeger-ui.sh), after they set
# BUILD_NAME: logging, their one option, the cache directory outside the repository, hashing.

log() { printf '[%s] %s\n' "$BUILD_NAME" "$*" >&2; }
die() { printf '[%s] error: %s\n' "$BUILD_NAME" "$*" >&2; exit 1; }

# parse_build_args "$@": sets force=1 for --force; --help prints the calling script's header.
parse_build_args() {
    force=0
    local arg
    for arg in "$@"; do
        case "$arg" in
            --force) force=1 ;;
            -h|--help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' >&2; exit 0 ;;
            *) die "unknown argument: $arg (see --help)" ;;
        esac
    done
}

# use_cache_dir REPO_ROOT: sets cache_dir to ${CALLSPAN_BIN_CACHE:-$HOME/.cache/callspan-bin},
# absolute and created, and dies when it is inside the repository (also through a symlink).
use_cache_dir() {
    local repo_root="$1"
    cache_dir="${CALLSPAN_BIN_CACHE:-$HOME/.cache/callspan-bin}"
    case "$cache_dir" in /*) ;; *) cache_dir="$PWD/$cache_dir" ;; esac
    _outside_repo "$repo_root" "$cache_dir"
    mkdir -p "$cache_dir"
    cache_dir="$(cd "$cache_dir" && pwd -P)"
    _outside_repo "$repo_root" "$cache_dir"
}

_outside_repo() {
    case "$2/" in
        "$1"/*) die "CALLSPAN_BIN_CACHE ($2) must be outside the repository ($1)" ;;
    esac
}

if command -v sha256sum >/dev/null 2>&1; then
    sha256() { sha256sum | cut -c1-16; }
else
    sha256() { shasum -a 256 | cut -c1-16; }
fi
