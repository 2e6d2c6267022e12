#!/usr/bin/env bash
# Where sluice's CPU goes, for the load benchmark's workload (benches/load/): sluice with the
# bench config (every policy on) under valgrind --tool=callgrind for a fixed request count,
# collection switched on after a warm-up, then `perf record` of the native binary under the
# same load when perf is allowed. Loopback only; every process started here is stopped.
#
#   scripts/bench_load_profile.sh [REQUESTS] [STREAMS]     (default 2000 and 200)
#   PROFILE_VARIANT=reuse [PROFILE_CONFIG=YAML] [PROFILE_WARM=N] scripts/bench_load_profile.sh [REQUESTS]
#       (a variant's route against its plain route, with the cache simulation: see below)
#
# Builds an unstripped sluice with line tables into target/prof (the [profile.release] of
# Cargo.toml is not touched: CARGO_PROFILE_RELEASE_* overrides). Output: target/bench/profile/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
N=${1:-2000}
S=${2:-200}
OUT=$ROOT/target/bench/profile
BIN=$ROOT/target/bench/bin
mkdir -p "$OUT"
rm -f "$OUT"/callgrind.out*
CARGO_PROFILE_RELEASE_STRIP=false CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \
    cargo build --release --locked --bin sluice --target-dir target/prof
PROF=$ROOT/target/prof/release/sluice
if ! [ -x "$BIN/bench_load" ] || ! [ -x "$BIN/bench_upstream" ]; then
    cargo build --release --locked --example bench_upstream --example bench_load
    mkdir -p "$BIN"
    cp -f target/release/examples/bench_upstream target/release/examples/bench_load "$BIN/"
fi

TMP=$(mktemp -d /tmp/sluice-bench-profile-XXXXXX)
PIDS=()
cleanup() {
    # SIGINT: sluice exits at once (SIGTERM would drain first).
    for p in "${PIDS[@]}"; do kill -INT "$p" 2>/dev/null || true; done
    sleep 1
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ready() { # admin port, seconds
    for _ in $(seq 1 $(( $2 * 10 ))); do
        if python3 - "$1" <<'PY' 2>/dev/null; then return 0; fi
import socket, sys
c = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1)
c.sendall(b"GET /readyz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
sys.exit(0 if b" 200 " in c.recv(100) else 1)
PY
        sleep 0.1
    done
    echo "sluice not ready" >&2; return 1
}

taskset -c 0 "$BIN/bench_upstream" --port 0 > "$TMP/up.out" &
PIDS+=($!)
for _ in $(seq 1 50); do grep -q listening "$TMP/up.out" 2>/dev/null && break; sleep 0.1; done
UP=$(sed -n 's/^listening 127.0.0.1://p' "$TMP/up.out")
export BENCH_UPSTREAM_KEY=sk-bench-upstream-key BENCH_VIRTUAL_KEY=sk-bench-virtual-key-0001

# --- route comparison (PROFILE_VARIANT=NAME, one of `--sluice-variants`): the variant's route
# against its `plain` route in one process, under callgrind with its cache simulation: each
# route's instructions and simulated L1 instruction and data cache misses per JSON request
# (README "Response cache"). PROFILE_CONFIG: YAML appended to the config (for example
# 'cache: {max_bytes: 1048576}', a tier that is full after the warm-up); PROFILE_WARM: requests
# sent to each route before measuring (default 300). REQUESTS is per route.
if [ -n "${PROFILE_VARIANT:-}" ]; then
    PX=$(free_port); AD=$(free_port)
    mkdir -p "$TMP/c3"
    "$BIN/bench_load" --sluice-config "$PX" "$AD" "$UP" "$PROFILE_VARIANT" > "$TMP/c3/s.yaml"
    if [ -n "${PROFILE_CONFIG:-}" ]; then printf '%s\n' "$PROFILE_CONFIG" >> "$TMP/c3/s.yaml"; fi
    rm -f "$OUT"/routes.out*
    taskset -c 1 valgrind --tool=callgrind --cache-sim=yes --instr-atstart=no \
        --callgrind-out-file="$OUT/routes.out" "$PROF" run -c "$TMP/c3/s.yaml" 2> "$TMP/vg3.err" &
    VG=$!; PIDS+=($VG)
    wait_ready "$AD" 120
    for plain in 1 0; do
        BENCH_PLAIN=$plain taskset -c 0 "$BIN/bench_load" --load-only "127.0.0.1:$PX" \
            "${PROFILE_WARM:-300}" 0 4 > /dev/null
    done
    callgrind_control -z "$VG" > /dev/null 2>&1
    callgrind_control -i on "$VG" > /dev/null
    for plain in 1 0; do
        BENCH_PLAIN=$plain taskset -c 0 "$BIN/bench_load" --load-only "127.0.0.1:$PX" "$N" 0 8
        callgrind_control -d "plain=$plain" "$VG" > /dev/null 2>&1
    done
    callgrind_control -i off "$VG" > /dev/null
    kill -INT "$VG" 2>/dev/null || true; wait "$VG" 2>/dev/null || true
    for i in 1 2; do
        callgrind_annotate --inclusive=yes "$OUT/routes.out.$i" > "$OUT/routes-$i-inclusive.txt" 2>/dev/null || true
    done
    python3 - "$OUT" "$N" <<'PY'
import re, sys
out, n = sys.argv[1], int(sys.argv[2])
def totals(path):
    for line in open(path):
        if "PROGRAM TOTALS" in line:
            return [int(x.replace(",", "")) for x in re.findall(r"([\d,]+) \(", line)]
    sys.exit(f"no totals in {path}")
# Events of --cache-sim=yes: Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw.
rows = []
for name, i in (("plain", 1), ("variant", 2)):
    t = totals(f"{out}/routes-{i}-inclusive.txt")
    rows.append((name, t[0] / n, t[3] / n, (t[4] + t[5]) / n))
for name, ir, i1, d1 in rows:
    print(f"{name:8} {ir:10.0f} instructions {i1:7.0f} L1i misses {d1:7.0f} L1d misses per request")
(_, a, b, c), (_, x, y, z) = rows
print(f"variant/plain: instructions {x / a:.3f}, L1i misses {y / b:.3f}, L1d misses {z / c:.3f}")
PY
    echo "  inclusive: $OUT/routes-1-inclusive.txt (plain), $OUT/routes-2-inclusive.txt (variant)"
    exit 0
fi

# --- callgrind: instruction counts, repeatable
PX=$(free_port); AD=$(free_port)
mkdir -p "$TMP/c1" "$TMP/c2"   # config dirs of their own: sluice watches them
"$BIN/bench_load" --sluice-config "$PX" "$AD" "$UP" > "$TMP/c1/s.yaml"
taskset -c 1 valgrind --tool=callgrind --instr-atstart=no \
    --callgrind-out-file="$OUT/callgrind.out" "$PROF" run -c "$TMP/c1/s.yaml" 2> "$TMP/vg.err" &
VG=$!; PIDS+=($VG)
wait_ready "$AD" 120
taskset -c 0 "$BIN/bench_load" --load-only "127.0.0.1:$PX" 200 20 4
callgrind_control -i on "$VG" > /dev/null
taskset -c 0 "$BIN/bench_load" --load-only "127.0.0.1:$PX" "$N" "$S" 8
callgrind_control -d "$VG" > /dev/null
callgrind_control -i off "$VG" > /dev/null
kill -INT "$VG" 2>/dev/null || true; wait "$VG" 2>/dev/null || true
F=$OUT/callgrind.out.1   # the dump taken right after the measured load
callgrind_annotate --inclusive=yes "$F" > "$OUT/callgrind-inclusive.txt" 2>/dev/null || true
callgrind_annotate "$F" > "$OUT/callgrind-self.txt" 2>/dev/null || true
TOTAL=$(grep -m1 -E '^ *[0-9,]+ .*PROGRAM TOTALS' "$OUT/callgrind-self.txt" | awk '{gsub(",","",$1); print $1}' || true)
echo "callgrind: ${TOTAL:-?} instructions for $N requests + $S streams ($(( ${TOTAL:-0} / (N + S) )) per request)"
echo "  self:      $OUT/callgrind-self.txt"
echo "  inclusive: $OUT/callgrind-inclusive.txt"

# --- perf: where the time goes natively (user + kernel), when allowed
if command -v perf >/dev/null 2>&1; then
    PX=$(free_port); AD=$(free_port)
    "$BIN/bench_load" --sluice-config "$PX" "$AD" "$UP" > "$TMP/c2/s.yaml"
    taskset -c 1 "$PROF" run -c "$TMP/c2/s.yaml" 2> /dev/null &
    SP=$!; PIDS+=($SP)
    wait_ready "$AD" 20
    taskset -c 0 "$BIN/bench_load" --load-only "127.0.0.1:$PX" 2000 20 8
    if perf record -F 2000 -p "$SP" -o "$OUT/perf.data" -- sleep 6 > /dev/null 2>&1 &
    then
        PERF=$!
        taskset -c 0 "$BIN/bench_load" --load-only "127.0.0.1:$PX" $(( N * 10 )) "$S" 8 || true
        wait "$PERF" || true
        # Self time only: the release build has no frame pointers, so call chains would lie.
        perf report -i "$OUT/perf.data" --sort dso --stdio 2>/dev/null | grep -v '^#' | grep -v '^$' > "$OUT/perf-dso.txt" || true
        perf report -i "$OUT/perf.data" --sort symbol --stdio 2>/dev/null | grep -v '^#' | grep -v '^$' | head -80 > "$OUT/perf-self.txt" || true
        echo "perf: $OUT/perf-dso.txt (user/kernel/libc split), $OUT/perf-self.txt (top symbols)"
    fi
fi
