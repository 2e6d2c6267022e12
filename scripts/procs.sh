# Process bookkeeping shared by scripts/demo.sh and scripts/run.sh (sourced, not run).
#
# After `. scripts/procs.sh NAME`: $work is a fresh temporary directory, `spawn CMD...` starts
# CMD in the background and remembers it, and on exit (normal, error, Ctrl-C or SIGTERM) every
# spawned process gets SIGTERM, up to 5 s to stop, then SIGKILL, and is reaped before $work
# is removed: nothing started here outlives the script (even killed by SIGKILL, where util-linux's
# `setpriv --pdeathsig` is available). `start_llmock PORT` runs llmock (the
# offline OpenAI + Anthropic upstream) on 127.0.0.1:PORT and waits for its /health.
# Needs $py (the .venv's python) set by the caller.

work="$(mktemp -d -t "sluice-$1.XXXXXX")"
pids=()

cleanup() {
    local pid
    trap '' INT TERM  # a second Ctrl-C must not cut the clean-up short (it is bounded)
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
trap 'exit 130' INT
trap 'exit 143' TERM

spawn() {
    if command -v setpriv >/dev/null 2>&1; then
        # Linux: SIGTERM to the child if this script dies without running its traps (SIGKILL).
        setpriv --pdeathsig TERM -- "$@" &
    else
        "$@" &
    fi
    pids+=($!)
}

start_llmock() {
    spawn .venv/bin/llmock serve --host 127.0.0.1 --port "$1" --log-level warning \
        >"$work/llmock.log" 2>&1
    "$py" scripts/demo.py wait llmock "http://127.0.0.1:$1/health" "$work/llmock.log"
}
