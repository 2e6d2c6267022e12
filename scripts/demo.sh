#!/usr/bin/env bash
# Offline demo: llmock as the upstream, sluice in front, the real openai and anthropic SDKs
# through sluice; prints the tokens sluice counted next to the usage the upstream reported.
# Everything runs on free loopback ports and is stopped on exit.
#
#   scripts/demo.sh                 (what `make demo` runs, after `make setup build`)
#   SLUICE_BIN=target/release/sluice scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."

py=.venv/bin/python
sluice="${SLUICE_BIN:-target/debug/sluice}"
[ -x "$py" ] || { echo "demo: no .venv: run \`make setup\`" >&2; exit 1; }
[ -x "$sluice" ] || { echo "demo: no $sluice: run \`make build\`" >&2; exit 1; }

work="$(mktemp -d -t sluice-demo.XXXXXX)"
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do
        # Give each a few seconds to stop gracefully, then kill it.
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

read -r mock_port proxy_port admin_port < <("$py" scripts/demo.py ports 3)
mock="http://127.0.0.1:$mock_port"
proxy="127.0.0.1:$proxy_port"
admin="127.0.0.1:$admin_port"

.venv/bin/llmock serve --host 127.0.0.1 --port "$mock_port" --log-level warning \
    >"$work/llmock.log" 2>&1 &
pids+=($!)
"$py" scripts/demo.py wait llmock "$mock/health" "$work/llmock.log"

"$py" scripts/demo.py config "$work/sluice.yaml" "$proxy" "$admin" "$mock"
SLUICE_DEMO_OPENAI_KEY=sk-demo-upstream-openai \
SLUICE_DEMO_ANTHROPIC_KEY=sk-ant-demo-upstream \
    "$sluice" run -c "$work/sluice.yaml" >"$work/sluice.log" 2>&1 &
pids+=($!)
"$py" scripts/demo.py wait sluice "http://$admin/readyz" "$work/sluice.log"

echo "llmock on $mock, sluice proxy on $proxy, admin on $admin"
echo
"$py" scripts/demo.py run "$proxy" "$admin"
