"""The server's stderr is JSON lines with event names, its own and its libraries' alike.

A real server, started as a user would (no log format given: stderr is not a TTY, so JSON), made
to schedule runs and to expire a lease; every line it wrote to stderr is then parsed.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import AGENT, base_env, free_port, stop, wait_for

pytestmark = pytest.mark.integration


def records(path: Path) -> list[dict[str, Any]]:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"not a JSON line on the server's stderr: {line!r}") from None
    return parsed


def test_the_servers_stderr_is_json_lines_with_event_names(tmp_path: Path) -> None:
    env = base_env(tmp_path, {"AGENT_LEASE_SECONDS": "2"})
    env.pop("AGENT_LOG_FORMAT")  # as a user starts it: auto
    port = free_port()
    stderr = tmp_path / "stderr.log"
    with stderr.open("wb") as err:
        server = subprocess.Popen(
            [AGENT, "server", "start", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,  # the banner: for the person who started it
            stderr=err,
        )
    url = f"http://127.0.0.1:{port}/api/"
    try:
        api = httpx.Client(base_url=url, timeout=10)

        def up() -> bool:
            try:
                return api.get("health").status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, timeout=30, what="the server")
        queue = api.post("work_queues", json={"name": f"q-{uuid.uuid4().hex[:8]}"}).json()
        deployment = {
            "name": "every-minute",
            "work_queue_id": queue["id"],
            "command": ["true"],
            "schedules": [{"interval_seconds": 60}],
        }
        created = api.post("deployments", json=deployment)
        assert created.is_success, created.text
        agent = api.post(
            "agents/heartbeat", json={"name": "silent", "work_queue_id": queue["id"]}
        ).json()
        now = api.post(f"deployments/{created.json()['id']}/runs", json={})
        assert now.status_code == 201, now.text
        due = api.post(
            f"work_queues/{queue['id']}/claim", json={"agent_id": agent["id"], "limit": 1}
        )
        assert due.status_code == 200 and due.json(), due.text
        run_id = due.json()[0]["flow_run"]["id"]

        # The agent never heartbeats again: its lease expires and the server says so.
        wait_for(
            lambda: any(r.get("event") == "lease_expired" for r in records(stderr)),
            timeout=30,
            what="a lease_expired line",
        )
    finally:
        stop(server)
        api.close()

    logged = records(stderr)
    assert all({"event", "level", "timestamp"} <= r.keys() for r in logged), logged
    [expired] = [r for r in logged if r["event"] == "lease_expired"]
    assert expired["run_id"] == run_id and expired["agent"] == "silent"
    assert expired["level"] == "warning" and expired["to"] in ("CRASHED", "SCHEDULED")
    assert any(r["event"] == "scheduler_tick" and r["runs_made"] >= 1 for r in logged), logged
    # A library's record (Alembic's migrations at start-up) comes through the same processors.
    assert any(r.get("logger", "").startswith("alembic") for r in logged), logged
