#!/usr/bin/env bash
# `make run`: sluice on conf/sluice.yaml, in the foreground until Ctrl-C or SIGTERM.
#
# Each pool is served by its real provider when its key variable is set (OPENAI_API_KEY,
# ANTHROPIC_API_KEY in conf/sluice.yaml), and by llmock (the offline mock `make demo` uses)
# when it is not: no keys gives a fully offline sluice, one key serves that provider for real
# and the other from llmock, both keys serve conf/sluice.yaml as is. Once sluice is ready it
# prints what an app needs (base URLs, a virtual key) and where /metrics is. On exit every
# process started here is stopped (scripts/procs.sh).
#
#   scripts/run.sh                               release build, 127.0.0.1:8080 / :9090
#   SLUICE_BIN=target/debug/sluice scripts/run.sh   that binary, no build
#   SLUICE_PROXY=127.0.0.1:0 SLUICE_ADMIN=127.0.0.1:0 scripts/run.sh   free ports, printed
#   SLUICE_RUN_OFFLINE=1 scripts/run.sh          llmock for every pool, even with keys set
#   SLUICE_CONF=conf/other.yaml scripts/run.sh   another config, same rules
# The same variables work as make variables: `make run SLUICE_BIN=target/debug/sluice`.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh run
py=.venv/bin/python
conf="${SLUICE_CONF:-conf/sluice.yaml}"
if [ -n "${SLUICE_BIN:-}" ]; then
    sluice="$SLUICE_BIN"
else
    cargo build --release --locked
    sluice=target/release/sluice
fi
[ -x "$sluice" ] || { echo "run: no sluice binary at $sluice" >&2; exit 1; }

. scripts/procs.sh run

# Sets proxy, admin, config and mock_port (empty when every pool has its keys).
plan="$("$py" scripts/run.py plan "$conf" "$work/sluice.yaml")"
eval "$plan"
if [ -n "$mock_port" ]; then
    start_llmock "$mock_port"
fi

SLUICE_OFFLINE_KEY=sk-sluice-offline-llmock spawn "$sluice" run -c "$config"
sluice_pid="${pids[-1]}"
"$py" scripts/demo.py wait sluice "http://$admin/readyz" /dev/null "$sluice_pid"
# /readyz can answer just before the proxy port is bound: wait for it too (bounded).
for _ in $(seq 100); do
    (: </dev/tcp/"${proxy%:*}"/"${proxy##*:}") 2>/dev/null && break
    sleep 0.05
done

echo
cat "$work/sluice.yaml.banner"
# Until sluice exits, or a signal runs the traps (which stop sluice and llmock).
wait "$sluice_pid"
