#!/usr/bin/env bash
# Side-by-side load benchmark (issue 6): direct, bare Pingora, nginx, sluice (every policy on)
# and LiteLLM, interleaved over rounds, on loopback. See benches/load/harness.rs.
#
#   scripts/bench_load.sh                 # full run (5 rounds in a 13-min budget, ~10 min + builds), make bench-load
#   scripts/bench_load.sh --quick --rounds 1 --no-hold --arms direct,bare,sluice   # dev loop
#
# Environment: BENCH_SKIP_BUILD=1 reuses target/bench/bin; BENCH_SKIP_LITELLM=1 skips the
# LiteLLM install (its arm is then skipped unless the venv already exists).
#
# Pinning: every proxy runs on core 1 (`taskset -c 1`, done by the harness); the harness (load
# generator) and the upstream run on core 0 (`taskset -c 0` below). Results go to
# target/bench/load-<timestamp>.json and target/bench/load-latest.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT=$ROOT/target/bench
BIN=$OUT/bin
VENV=$OUT/litellm-venv
mkdir -p "$BIN"

say() { printf '\n==> %s\n' "$*" >&2; }

cleanup() {
    # Every process the harness started is listed in run.pids (trees included): stop them by id.
    local pids=""
    [ -f "$OUT/run.pids" ] && pids=$(sort -u "$OUT/run.pids" | tr '\n' ' ')
    for p in $pids; do kill -CONT "$p" 2>/dev/null || true; kill -TERM "$p" 2>/dev/null || true; done
    for _ in $(seq 1 30); do
        local alive=""
        for p in $pids; do kill -0 "$p" 2>/dev/null && alive="$alive $p"; done
        [ -z "$alive" ] && break
        sleep 0.1
    done
    for p in $pids; do kill -KILL "$p" 2>/dev/null || true; done
    rm -f "$OUT/run.pids"
    # Anything still running from this harness: its binaries live in $BIN, its configs in
    # /tmp/sluice-bench-*. Report and stop those by pid.
    local left
    left=$(pgrep -f "$BIN/|/sluice-bench-" || true)
    if [ -n "$left" ]; then
        echo "bench_load: stopping leftover processes:" >&2
        ps -o pid=,args= -p $left >&2 || true
        kill -KILL $left 2>/dev/null || true
    else
        echo "bench_load: no process left behind (pgrep -f '$BIN/|/sluice-bench-' is empty)" >&2
    fi
}

# --- 1. peers: nginx-light (Debian) and LiteLLM (its own venv). Both optional at run time.
if ! [ -x /usr/sbin/nginx ] && ! command -v nginx >/dev/null 2>&1; then
    say "installing nginx-light (Debian)"
    (export DEBIAN_FRONTEND=noninteractive
     apt-get install -y -qq nginx-light >/dev/null 2>&1 ||
         { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq nginx-light >/dev/null 2>&1; }) ||
        echo "nginx-light install failed: the nginx arm will be skipped" >&2
fi
if [ "${BENCH_SKIP_LITELLM:-0}" != 1 ] && ! [ -x "$VENV/bin/litellm" ]; then
    say "installing litellm[proxy]==1.106.2 into $VENV (a few minutes, once)"
    if ! { python3 -m venv "$VENV" &&
           "$VENV/bin/pip" install -q --upgrade pip >/dev/null 2>&1;
           timeout 900 "$VENV/bin/pip" install -q 'litellm[proxy]==1.106.2'; }; then
        echo "LiteLLM install failed: the litellm arm will be skipped" >&2
        rm -rf "$VENV"
    fi
fi

# --- 2. release builds, frozen into target/bench/bin so concurrent rebuilds cannot swap them.
# sluice is built exactly as `make release` builds it (no dev-dependency features), then the
# harness examples (which unify dev-dependency features, hence a separate invocation).
if [ "${BENCH_SKIP_BUILD:-0}" != 1 ] || ! [ -x "$BIN/bench_load" ]; then
    say "cargo build --release (sluice, then the bench examples)"
    cargo build --release --locked --bin sluice
    cp -f target/release/sluice "$BIN/sluice"
    cargo build --release --locked --example bench_upstream --example bare_pingora --example bench_load
    for b in bench_upstream bare_pingora bench_load; do cp -f "target/release/examples/$b" "$BIN/$b"; done
fi

# --- 3. run, pinned. A proxy holds two sockets per open stream: take the whole fd hard limit.
ulimit -n "$(ulimit -Hn)"
trap cleanup EXIT
trap 'exit 130' INT TERM
say "bench_load $* (load generator + upstream on core 0, proxies on core 1; fd limit $(ulimit -n))"
taskset -c 0 "$BIN/bench_load" --bin-dir "$BIN" --out-dir "$OUT" --litellm-venv "$VENV" "$@"
