"""Secrets stay secret end to end: a flow that prints secret env values and the API key, a real
agent shipping its output, and what the server, `flow-run inspect` and the agent's log show."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from tests.support import Server, cli, server_fixture, start_agent, stop, wait_for

pytestmark = pytest.mark.integration

MASK = "********"
DEPLOY_TOKEN = "tok-deploy-0123456789"
DB_PASSWORD = "pw-run-9876543210"
API_KEY = "agent-api-key-5555"
STRADDLE_AT = 64 * 1024 - 8


server = server_fixture("redaction")


def test_secrets_are_masked_in_run_logs_state_inspect_and_agent_logs(
    server: Server, tmp_path: Path
) -> None:
    api = server.client()
    queue = api.post("work_queues", json={"name": f"q-{uuid.uuid4().hex[:8]}"}).json()
    script = (
        'echo "token=$DEPLOY_TOKEN"; echo "key=$HANDED_OVER"; '
        'echo "url=postgresql://app:$DB_PASSWORD@db/x"; echo "pw=$DB_PASSWORD" >&2; '
        # One line of 64 KiB and more, cut by the agent where the token is: half in each piece.
        f"printf '%{STRADDLE_AT}s' '' | tr ' ' x; echo \"$DEPLOY_TOKEN-after\"; exit 3"
    )
    deployment = api.post(
        "deployments",
        json={
            "name": f"d-{uuid.uuid4().hex[:8]}",
            "work_queue_id": queue["id"],
            "command": ["sh", "-c", script],
            # HANDED_OVER does not look secret: its value is masked for being the API key.
            "env": {"DEPLOY_TOKEN": DEPLOY_TOKEN, "GREETING": "hello", "HANDED_OVER": API_KEY},
        },
    ).json()
    run = api.post(
        f"deployments/{deployment['id']}/runs", json={"env": {"DB_PASSWORD": DB_PASSWORD}}
    ).json()
    log_path = tmp_path / "agent.log"
    # The server has no API key, so the agent's is sent and ignored.
    agent = start_agent(server, queue["id"], log_path=log_path, AGENT_API_KEY=API_KEY)
    try:
        done = wait_for(
            lambda: (
                (r := api.get(f"flow_runs/{run['id']}").json())["state"]["type"] == "FAILED" and r
            ),
            timeout=30,
            what="the run to fail",
        )
        lines = [line["line"] for line in api.get(f"flow_runs/{run['id']}/logs").json()]
        inspect_cli = cli(server, "flow-run", "inspect", run["id"], env={"AGENT_API_KEY": API_KEY})
        inspect = json.loads(inspect_cli.stdout)
    finally:
        stop(agent)
        api.close()

    assert f"token={MASK}" in lines
    assert f"key={MASK}" in lines
    assert f"url=postgresql://app:{MASK}@db/x" in lines
    assert f"pw={MASK}" in lines
    cut = next(n for n, line in enumerate(lines) if line.startswith("xxxx"))
    assert lines[cut : cut + 2] == ["x" * STRADDLE_AT + MASK, f"{MASK}-after"]
    # The failure message quotes stderr: masked too.
    assert f"pw={MASK}" in done["state"]["message"]
    assert inspect["env"] == {
        "DB_PASSWORD": MASK,
        "DEPLOY_TOKEN": MASK,
        "GREETING": "hello",
        "HANDED_OVER": MASK,  # not a secret name, but the value is the CLI's API key
    }
    everything = json.dumps([lines, done["state"], inspect]) + log_path.read_text()
    for secret in (DEPLOY_TOKEN, DEPLOY_TOKEN[:8], DEPLOY_TOKEN[8:], DB_PASSWORD, API_KEY):
        where = everything.find(secret)
        assert where < 0, everything[max(0, where - 300) : where + 100]


def test_every_command_that_prints_env_masks_it_as_flow_run_inspect_does(server: Server) -> None:
    api = server.client()
    queue = api.post("work_queues", json={"name": f"q-{uuid.uuid4().hex[:8]}"}).json()
    # A paused queue: nobody claims the run, `work-queue preview` still lists it.
    api.post(f"work_queues/{queue['id']}/pause")
    name = f"d-{uuid.uuid4().hex[:8]}"
    deployment = api.post(
        "deployments",
        json={
            "name": name,
            "work_queue_id": queue["id"],
            "command": ["true"],
            "env": {"DEPLOY_TOKEN": DEPLOY_TOKEN, "GREETING": "hello"},
            "runner_options": {"env": {"DB_PASSWORD": DB_PASSWORD}},
        },
    ).json()
    api.post(f"deployments/{deployment['id']}/runs", json={"env": {"DB_PASSWORD": DB_PASSWORD}})
    api.close()

    inspected = json.loads(cli(server, "deployment", "inspect", name).stdout)
    assert inspected["env"] == {"DEPLOY_TOKEN": MASK, "GREETING": "hello"}
    assert inspected["runner_options"] == {"env": {"DB_PASSWORD": MASK}}
    listed = json.loads(cli(server, "deployment", "ls", "--json").stdout)
    assert next(d for d in listed if d["name"] == name)["env"]["DEPLOY_TOKEN"] == MASK
    shown = [
        cli(server, "deployment", "inspect", name).stdout,
        cli(server, "deployment", "ls", "--json").stdout,
        cli(server, "flow-run", "ls", "--json", "--deployment", name).stdout,
        cli(server, "work-queue", "preview", queue["name"], "--json", "--hours", "1").stdout,
    ]
    runs = json.loads(shown[2])
    assert [r["env"]["DB_PASSWORD"] for r in runs] == [MASK]
    for text in shown:
        assert DEPLOY_TOKEN not in text and DB_PASSWORD not in text, text
