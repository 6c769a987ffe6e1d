#!/usr/bin/env bash
# The main job on a fresh machine: install flowagent into .venv, start the embedded server,
# create a work queue and a deployment of examples/flows/hello.py, start an agent on the queue,
# run the flow, print its logs and final state, then stop everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."

PORT="${QUICKSTART_PORT:-4200}"
export AGENT_HOME="${AGENT_HOME:-$PWD/.quickstart}"
export AGENT_API_URL="http://127.0.0.1:${PORT}/api"

if [ ! -x .venv/bin/agent ]; then
  echo "==> installing flowagent into .venv"
  python3 -m venv .venv
  .venv/bin/pip install --quiet --upgrade pip
  # compat: a plain path in a .pth file. The default editable mode installs an import finder
  # that costs every Python start in this venv (agent, fence, each flow run) 12-16 ms; an installed
  # package (a wheel) has none.
  .venv/bin/pip install --quiet -e '.[server]' --config-settings editable_mode=compat \
      || .venv/bin/pip install --quiet -e '.[server]'  # a setuptools without compat mode
fi
PATH="$PWD/.venv/bin:$PATH"

pids=()
cleanup() { for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

echo "==> starting the embedded server on port ${PORT} (home ${AGENT_HOME})"
agent server start --port "$PORT" &
server_pid=$!
pids+=($server_pid)
.venv/bin/python - "$server_pid" <<PY
import json, os, sys, time, urllib.request
pid = int(sys.argv[1])
for _ in range(200):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        raise SystemExit("the server did not start (see its error above); try QUICKSTART_PORT=4300")
    try:
        with urllib.request.urlopen("${AGENT_API_URL}/health", timeout=1) as answer:
            if json.load(answer).get("server") == "flowagent":
                break
    except (OSError, ValueError, AttributeError):
        pass
    time.sleep(0.1)
else:
    raise SystemExit("the server did not come up on port ${PORT}")
PY

queue="quickstart-$(date +%s)"
echo "==> creating work queue ${queue}"
queue_id=$(agent work-queue create "$queue")
echo "    id ${queue_id}"

echo "==> creating deployment hello (examples/flows/hello.py:hello)"
agent deployment create flows/hello.py:hello --name hello --queue "$queue_id" \
  --workdir examples --param name=flowagent --param count=3 >/dev/null

echo "==> starting an agent on ${queue_id}"
AGENT_LOG_FORMAT=console agent start "$queue_id" --name quickstart-agent &
pids+=($!)

echo "==> running the flow and following its logs"
agent deployment run hello --watch
