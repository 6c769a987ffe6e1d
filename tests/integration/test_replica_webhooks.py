"""Webhooks with two replicas on one PostgreSQL: events made through either replica are each
POSTed once, by the leader alone, to a real receiver on loopback."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from tests.integration.test_schedules_harness import webhook_receiver
from tests.replicas import client, replicas
from tests.support import Server, make_deployment, make_queue, make_run, wait_for

pytestmark = pytest.mark.integration

RUNS = 20


def count(server: Server, event: str) -> int:
    found = 0
    for line in (server.home / "server.log").read_text(errors="replace").splitlines():
        try:
            found += json.loads(line).get("event") == event
        except (ValueError, AttributeError):
            continue
    return found


def test_each_event_is_sent_once_across_replicas(tmp_path: Path, postgres_url: str) -> None:
    env = {"AGENT_WEBHOOK_ALLOW_PRIVATE": "true"}
    with (
        webhook_receiver() as receiver,
        replicas(tmp_path, postgres_url, extra_env=env) as servers,
    ):
        apis = [client(server) for server in servers]
        queue = make_queue(apis[0])
        deployment = make_deployment(apis[0], queue, command=["true"])
        hook = apis[1].post(
            "notifications",
            json={"webhook_url": receiver.url, "on": ["FAILED"], "work_queue_id": queue["id"]},
        )
        assert hook.status_code == 201, hook.text
        runs = []
        for i in range(RUNS):
            api = apis[i % 2]  # each run's states through one replica or the other
            run = make_run(api, deployment)
            for state in ("PENDING", "RUNNING", "FAILED"):
                response = api.post(f"flow_runs/{run['id']}/set_state", json={"type": state})
                assert response.status_code == 200, response.text
            runs.append(run["id"])

        def delivered() -> bool:
            listed = apis[0].get(f"notifications/{hook.json()['id']}/deliveries").json()
            return len(listed) == RUNS and all(d["status"] != "PENDING" for d in listed)

        wait_for(delivered, timeout=60, what="every event delivered")
        sent = Counter(body["flow_run"]["id"] for body in receiver.bodies())
        assert sorted(sent) == sorted(runs)
        assert [run_id for run_id, n in sent.items() if n > 1] == []
        # Sent by the leader alone; the other replica sent nothing.
        sending = sorted(count(server, "notification_delivery_ended") for server in servers)
        assert sending == [0, RUNS]
        assert [count(s, "leadership_acquired") for s in servers].count(1) == 1
        for api in apis:
            api.close()
