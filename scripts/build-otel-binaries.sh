#!/usr/bin/env bash
# Build the two real binaries that callspan's integration tests run:
#
#   callspan-otelcol  a minimal OpenTelemetry Collector (collector-config/otelcol-builder)
#   jaeger            Jaeger v2 v1.76.0 (pinned by collector-config/jaeger-tool)
#
# Everything is compiled from source fetched through the Go module proxy; no
# prebuilt binary is downloaded and nothing is written inside the repository.
# The binaries go to a cache directory outside the repo:
#
#   ${CALLSPAN_BIN_CACHE:-$HOME/.cache/callspan-bin}/<name>-<hash>/<binary>
#
# where <hash> covers the module's go.mod, go.sum (and main.go), the build
# flags and the target platform, so an unchanged module is not rebuilt.
#
# Progress goes to stderr; stdout gets only these two lines, at the end:
#
#   CALLSPAN_OTELCOL_BIN=/path/to/callspan-otelcol
#   CALLSPAN_JAEGER_BIN=/path/to/jaeger
#
# so a caller can do:   set -a; eval "$(scripts/build-otel-binaries.sh)"; set +a
#
# Options:  --force   rebuild even when the cached binaries exist
# Env:      CALLSPAN_BIN_CACHE  cache directory (see above)
#           GOPROXY, GOMODCACHE, GOCACHE, GOTOOLCHAIN are honoured as usual.
set -euo pipefail

readonly JAEGER_VERSION="v1.76.0"
readonly JAEGER_PKG="github.com/jaegertracing/jaeger/cmd/jaeger"
# Bump when the build recipe below changes, to invalidate cached binaries.
readonly RECIPE="1"

readonly BUILD_NAME="build-otel-binaries"
# shellcheck source=build-common.sh
source "$(dirname "${BASH_SOURCE[0]}")/build-common.sh"
parse_build_args "$@"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
otelcol_mod="$repo_root/collector-config/otelcol-builder"
jaeger_mod="$repo_root/collector-config/jaeger-tool"

if ! command -v go >/dev/null 2>&1; then
    die "the Go toolchain ('go') is not on PATH. Install Go (e.g. 'apt-get install golang-go'; the modules ask for Go 1.26, which an older 'go' fetches by itself from the module proxy when GOTOOLCHAIN=auto) and run this script again."
fi
for f in "$otelcol_mod/go.mod" "$otelcol_mod/go.sum" "$otelcol_mod/main.go" "$jaeger_mod/go.mod" "$jaeger_mod/go.sum"; do
    [[ -f "$f" ]] || die "missing $f"
done

goos="$(go env GOOS)"
goarch="$(go env GOARCH)"
use_cache_dir "$repo_root"

# Small and reproducible: no symbol tables, no local paths, no VCS stamping.
# -mod=readonly: build exactly what go.mod/go.sum pin, never edit them.
build_flags=(-trimpath -buildvcs=false -mod=readonly)
otelcol_ldflags="-s -w"
jaeger_ldflags="-s -w -X github.com/jaegertracing/jaeger/internal/version.latestVersion=${JAEGER_VERSION}"

key_of() { # key_of LDFLAGS FILE... -> hash of the recipe, the platform and the files
    local ldflags="$1"; shift
    {
        printf 'recipe=%s goos=%s goarch=%s flags=%s ldflags=%s\n' \
            "$RECIPE" "$goos" "$goarch" "${build_flags[*]}" "$ldflags"
        local f
        for f in "$@"; do
            printf '== %s\n' "$(basename "$f")"
            cat "$f"
        done
    } | sha256
}

# build NAME MODULE_DIR PACKAGE LDFLAGS OUT VERSION_ARG: compile into OUT (atomically)
# unless it exists; VERSION_ARG is how the binary prints its version (a smoke check).
build() {
    local name="$1" moddir="$2" pkg="$3" ldflags="$4" out="$5" version_arg="$6"
    if [[ "$force" == 0 && -x "$out" ]]; then
        log "$name: cached at $out"
        return 0
    fi
    mkdir -p "$(dirname "$out")"
    local tmp="$out.tmp.$$"
    pending_tmp="$tmp"  # removed by the EXIT trap if we are interrupted
    log "$name: building $pkg in $moddir ($(go version | cut -d' ' -f3), $goos/$goarch) ..."
    local start=$SECONDS
    if ! (cd "$moddir" && CGO_ENABLED=0 go build "${build_flags[@]}" -ldflags="$ldflags" -o "$tmp" "$pkg"); then
        rm -f "$tmp"
        die "$name: 'go build' failed (see the errors above). The Go module proxy must be reachable (GOPROXY=$(go env GOPROXY))."
    fi
    if ! "$tmp" "$version_arg" >/dev/null 2>&1; then
        rm -f "$tmp"
        die "$name: the built binary does not run ('$tmp $version_arg' failed)"
    fi
    mv -f "$tmp" "$out"
    pending_tmp=""
    log "$name: built in $((SECONDS - start))s, $(du -h "$out" | cut -f1) at $out"
}

pending_tmp=""
trap 'if [[ -n "$pending_tmp" ]]; then rm -f "$pending_tmp"; fi' EXIT
total_start=$SECONDS

otelcol_key="$(key_of "$otelcol_ldflags" "$otelcol_mod/go.mod" "$otelcol_mod/go.sum" "$otelcol_mod/main.go")"
otelcol_bin="$cache_dir/otelcol-$otelcol_key/callspan-otelcol"
build callspan-otelcol "$otelcol_mod" . "$otelcol_ldflags" "$otelcol_bin" --version

jaeger_key="$(key_of "$jaeger_ldflags" "$jaeger_mod/go.mod" "$jaeger_mod/go.sum")"
jaeger_bin="$cache_dir/jaeger-$JAEGER_VERSION-$jaeger_key/jaeger"
build jaeger "$jaeger_mod" "$JAEGER_PKG" "$jaeger_ldflags" "$jaeger_bin" version

log "done in $((SECONDS - total_start))s"
printf 'CALLSPAN_OTELCOL_BIN=%q\n' "$otelcol_bin"
printf 'CALLSPAN_JAEGER_BIN=%q\n' "$jaeger_bin"
