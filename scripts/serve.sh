#!/usr/bin/env bash
# Start a local Prefect server and serve one build-dataset/<name> deployment per dataset of
# params.yaml; Ctrl-C stops both. The server listens on 127.0.0.1:$PORT (default 4200) and
# keeps its database in .prefect/ (analytics off). In another terminal:
#   source scripts/prefect-env.sh && prefect deployment run build-dataset/demo --watch
# Usage: [PORT=4200] bash scripts/serve.sh [--params FILE]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/prefect-env.sh
export PREFECT_RUNNER_POLL_FREQUENCY="${PREFECT_RUNNER_POLL_FREQUENCY:-2}"  # default 10 s

healthy() {  # the API's health endpoint answers 200
    python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' \
        "$PREFECT_API_URL/health" 2>/dev/null
}

started=""
stop_server() {
    if [ -n "$started" ]; then
        prefect server stop >/dev/null || echo "serve.sh: prefect server stop failed" >&2
    fi
}
trap stop_server EXIT
trap 'exit 130' INT  # exit (running the EXIT trap) even before `uir serve` starts
trap 'exit 143' TERM

if healthy; then
    echo "serve.sh: reusing the Prefect server at $PREFECT_API_URL"
else
    # In its own session where possible, so that Ctrl-C stops it after `uir serve`, not before.
    detach=""
    command -v setsid >/dev/null && detach=setsid
    started=1
    $detach prefect server start --host 127.0.0.1 --port "$PREFECT_SERVER_API_PORT" \
        --analytics-off --background
    for _ in $(seq 120); do
        healthy && break
        sleep 0.5
    done
    healthy || { echo "serve.sh: no healthy Prefect server at $PREFECT_API_URL" >&2; exit 1; }
    echo "serve.sh: Prefect server up at ${PREFECT_API_URL%/api} (PREFECT_HOME=$PREFECT_HOME)"
fi

# In the background so that a signal to this script reaches it: a non-interactive shell
# defers traps until a foreground child exits. `uir serve` stops gracefully on SIGTERM.
uir serve --port "$PREFECT_SERVER_API_PORT" "$@" &
serve_pid=$!
trap 'kill -TERM "$serve_pid" 2>/dev/null || true' INT TERM
status=0
wait "$serve_pid" || status=$?
if kill -0 "$serve_pid" 2>/dev/null; then  # a signal cut the wait short: wait for the stop
    status=0
    wait "$serve_pid" || status=$?
fi
exit "$status"
