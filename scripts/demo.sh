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

. scripts/procs.sh demo

read -r mock_port proxy_port admin_port < <("$py" scripts/demo.py ports 3)
mock="http://127.0.0.1:$mock_port"
proxy="127.0.0.1:$proxy_port"
admin="127.0.0.1:$admin_port"

start_llmock "$mock_port"

"$py" scripts/demo.py config "$work/sluice.yaml" "$proxy" "$admin" "$mock"
SLUICE_DEMO_OPENAI_KEY=sk-demo-upstream-openai \
SLUICE_DEMO_ANTHROPIC_KEY=sk-ant-demo-upstream \
    spawn "$sluice" run -c "$work/sluice.yaml" >"$work/sluice.log" 2>&1
"$py" scripts/demo.py wait sluice "http://$admin/readyz" "$work/sluice.log"

echo "llmock on $mock, sluice proxy on $proxy, admin on $admin"
echo
"$py" scripts/demo.py run "$proxy" "$admin"
