"""Background work on one replica at a time, and another takes over when it dies: two replicas
on one PostgreSQL, the leader SIGKILLed; the other picks up the scheduler and the lease reaper
within a bounded time, and every scheduled time still gets exactly one run."""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.replicas import client, kill, replicas
from tests.support import Server, make_deployment, make_queue, wait_for

pytestmark = pytest.mark.integration

LEASE_SECONDS = 3
# Leader dead → lock free at once (its session ends with the process) → the other replica's
# next try, every second; with room for a loaded machine.
TAKEOVER_SECONDS = 15


def events(server: Server, name: str) -> list[dict[str, Any]]:
    found = []
    for line in (server.home / "server.log").read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == name:
            found.append(record)
    return found


def leads(server: Server) -> bool:
    return bool(events(server, "leadership_acquired"))


def test_the_other_replica_takes_over_when_the_leader_dies(
    tmp_path: Path, postgres_url: str
) -> None:
    env = {"AGENT_LEASE_SECONDS": str(LEASE_SECONDS), "AGENT_SCHEDULE_HORIZON_SECONDS": "2"}
    with replicas(tmp_path, postgres_url, extra_env=env) as servers:
        wait_for(lambda: any(leads(s) for s in servers), timeout=10, what="a leader")
        assert [leads(s) for s in servers].count(True) == 1
        leader, follower = servers if leads(servers[0]) else servers[::-1]
        api = client(follower)
        # What an operator (or a load balancer's check) reads: which replica does the work.
        with client(leader) as leaders:
            assert leaders.get("health").json()["leader"] is True
        assert api.get("health").json()["leader"] is False
        queue = make_queue(api)
        deployment = make_deployment(api, queue, command=["true"])
        schedule = api.post(
            f"deployments/{deployment['id']}/schedules", json={"cron": "* * * * * *"}
        )
        assert schedule.status_code == 201, schedule.text

        # An agent (through the follower) holds a run, then goes silent: only a leader reaps it.
        agent = api.post(
            "agents/heartbeat",
            json={"name": f"a-{uuid.uuid4().hex[:8]}", "work_queue_id": queue["id"]},
        ).json()
        claimed = wait_for(
            lambda: api.post(
                f"work_queues/{queue['id']}/claim",
                json={"agent_id": agent["id"], "limit": 1, "lead_seconds": 5},
            ).json(),
            timeout=20,
            what="a scheduled run to claim",
        )
        held = claimed[0]["flow_run"]["id"]

        # A heartbeat just before: its lease cannot run out while the old leader still lives.
        beat = {"name": agent["name"], "work_queue_id": queue["id"]}
        assert api.post("agents/heartbeat", json=beat).status_code == 200
        kill(leader)
        killed = time.time()
        wait_for(lambda: leads(follower), timeout=TAKEOVER_SECONDS, what="the follower to lead")
        assert api.get("health").json()["leader"] is True
        # Before it led, the follower did no background work.
        assert (
            events(follower, "scheduler_tick")[:1] == []
            or min(e["timestamp"] for e in events(follower, "scheduler_tick"))
            > events(follower, "leadership_acquired")[0]["timestamp"]
        )

        # The new leader's lease reaper resolves the silent agent's run…
        run = wait_for(
            lambda: (r := api.get(f"flow_runs/{held}").json())["state"]["type"] == "CRASHED" and r,
            timeout=LEASE_SECONDS * 2 + TAKEOVER_SECONDS,
            what="the silent agent's run to be CRASHED",
        )
        assert "stopped heartbeating" in run["state"]["message"]

        # …and its scheduler goes on making runs: each scheduled time once.
        def runs() -> list[dict[str, Any]]:
            listed = api.get("flow_runs", params={"deployment_id": deployment["id"], "limit": 1000})
            assert listed.status_code == 200, listed.text
            return list(listed.json())

        wait_for(
            lambda: any(
                datetime.fromisoformat(r["expected_start_time"]).timestamp() > killed + 3
                for r in runs()
            ),
            timeout=TAKEOVER_SECONDS,
            what="a scheduled run made after the takeover",
        )
        times = Counter(r["expected_start_time"] for r in runs())
        assert [t for t, n in times.items() if n > 1] == []
        api.close()
