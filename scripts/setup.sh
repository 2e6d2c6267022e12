#!/usr/bin/env bash
# Install what building and testing sluice needs; fast and silent when already done.
#
#   scripts/setup.sh          system packages + test tools + the Python venv (.venv)
#   scripts/setup.sh system   system packages only (what `cargo build` needs)
#   scripts/setup.sh run      system packages + the Python venv (what `make run` needs: llmock
#                             for the offline upstream; no redis-server, no JS SDKs)
#
# System: cmake (pingora-core builds zlib-ng with it) and python3-venv; for the tests also
# redis-server (the shared-limits tests start their own on a free port). apt-get runs only
# when something is missing; sudo only when not root.
# Venv: .venv is (re)installed only when a requirements file (tests/e2e, tests/deploy) is
# newer than the stamp .venv/.requirements.stamp.
# JS: the official JS SDKs (tests/e2e/js, exact versions in its package-lock.json) are
# installed with `npm ci` only when the lock file is newer than node_modules/.stamp.
set -euo pipefail
cd "$(dirname "$0")/.."

want="${1:-all}"
requirements=(tests/e2e/requirements.txt tests/deploy/requirements.txt)
venv=.venv
stamp="$venv/.requirements.stamp"

missing_packages() {
    local pkgs=()
    command -v cmake >/dev/null 2>&1 || pkgs+=(cmake)
    if [ "$want" = all ]; then
        command -v redis-server >/dev/null 2>&1 || pkgs+=(redis-server)
    fi
    if [ "$want" = all ] && ! command -v npm >/dev/null 2>&1; then
        command -v node >/dev/null 2>&1 || pkgs+=(nodejs)
        pkgs+=(npm)
    fi
    if ! command -v python3 >/dev/null 2>&1; then
        pkgs+=(python3 python3-venv)
    elif ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
        # Debian's python3 ships venv without ensurepip; python3-venv adds it.
        pkgs+=(python3-venv)
    fi
    echo "${pkgs[@]:-}"
}

install_system() {
    local pkgs
    pkgs="$(missing_packages)"
    [ -z "$pkgs" ] && return 0
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "setup: installing $pkgs"
    # shellcheck disable=SC2086 # word splitting of the package list is intended
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    # shellcheck disable=SC2086
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $pkgs >/dev/null
}

install_venv() {
    local stale=0 r
    for r in "${requirements[@]}"; do
        [ "$r" -nt "$stamp" ] && stale=1
    done
    if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$stale" -eq 0 ]; then
        return 0
    fi
    echo "setup: installing ${requirements[*]} into $venv"
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "${requirements[@]/#/-r}"
    touch "$stamp"
}

install_js() {
    local dir=tests/e2e/js
    local js_stamp="$dir/node_modules/.stamp"
    if [ -f "$js_stamp" ] && [ ! "$dir/package-lock.json" -nt "$js_stamp" ]; then
        return 0
    fi
    echo "setup: installing the JS SDKs into $dir/node_modules"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    touch "$js_stamp"
}

install_system
case "$want" in
    system) ;;
    run) install_venv ;;
    all) install_venv; install_js ;;
    *) echo "usage: $0 [all|system|run]" >&2; exit 2 ;;
esac
