#!/usr/bin/env bash
# Proxy cost of tenant limits: the same sluice release binary and workload with the bench
# tenant's limits on (every kind, far above the load) and off, interleaved for N rounds.
# Reports CPU µs per request (utime+stime from /proc, proxy pinned to core 1) and req/s.
# Needs the binaries `make bench-load` builds into target/bench/bin.
#   scripts/bench_limits_onoff.sh [rounds] [requests]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-3}"; n="${2:-20000}"
bin=target/bench/bin
for b in sluice bench_upstream bench_load; do
    [ -x "$bin/$b" ] || { echo "missing $bin/$b: run make bench-load first" >&2; exit 2; }
done
dir="$(mktemp -d)"; pids=()
cleanup() { for p in "${pids[@]:-}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$dir"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

up=$(free_port)
taskset -c 0 "$bin/bench_upstream" --port "$up" --chunks 20 --gap-ms 1 >/dev/null 2>&1 & pids+=($!)
sleep 0.3
export BENCH_UPSTREAM_KEY=sk-bench-upstream-key BENCH_VIRTUAL_KEY=sk-bench-virtual-key-0001
for r in $(seq 1 "$rounds"); do
    for arm in on off; do
        p=$(free_port); a=$(free_port)
        "$bin/bench_load" --sluice-config "$p" "$a" "$up" > "$dir/on.yaml"
        if [ "$arm" = off ]; then
            # Drop the tenant's `limits:` block (and the model-level ones inside it).
            awk '/^      limits:/{skip=1; next} skip && /^      [a-z_]+:/{skip=0} skip && /^        /{next} {skip=0; print}' "$dir/on.yaml" > "$dir/off.yaml"
        fi
        taskset -c 1 "$bin/sluice" run -c "$dir/$arm.yaml" 2>/dev/null & sp=$!; pids+=($sp)
        until curl -sf "http://127.0.0.1:$a/readyz" >/dev/null; do sleep 0.01; done
        t0=$(cpu_ticks "$sp"); s0=$(date +%s.%N)
        taskset -c 0 "$bin/bench_load" --load-only "127.0.0.1:$p" "$n" 0 8 2>"$dir/load.log" || { cat "$dir/load.log"; exit 1; }
        t1=$(cpu_ticks "$sp"); s1=$(date +%s.%N)
        python3 - "$arm" "$r" "$t0" "$t1" "$hz" "$n" "$s0" "$s1" <<'PY'
import sys
arm, r, t0, t1, hz, n, s0, s1 = sys.argv[1:]
cpu_us = (int(t1) - int(t0)) / int(hz) * 1e6 / int(n)
print(f"round {r} limits {arm:3}: {cpu_us:7.1f} CPU µs/request, {int(n)/(float(s1)-float(s0)):8.0f} req/s")
PY
        kill "$sp"; wait "$sp" 2>/dev/null || true
    done
done
