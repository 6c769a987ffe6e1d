"""Two replicas live through a PostgreSQL restart: while the database is down a request is a
503 to retry (never a 500); once it is back, they serve again without being restarted, a
leader is elected again, and a claim held on one replica is again woken by a run created on
the other."""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.postgres import PostgresCluster
from tests.replicas import client, replicas
from tests.support import Server, make_deployment, make_queue, wait_for

pytestmark = pytest.mark.integration

NOTIFIED = 0.5  # as in test_replica_wakeups.py


def count(server: Server, event: str) -> int:
    found = 0
    for line in (server.home / "server.log").read_text(errors="replace").splitlines():
        try:
            found += json.loads(line).get("event") == event
        except (ValueError, AttributeError):
            continue
    return found


def test_replicas_recover_from_a_database_restart(
    tmp_path: Path, postgres_cluster: PostgresCluster
) -> None:
    url = postgres_cluster.new_database()
    with replicas(tmp_path, url) as (a, b), client(a) as on_a, client(b) as on_b:
        queue = make_queue(on_a)
        deployment = make_deployment(on_a, queue, command=["true"])
        agent = on_b.post(
            "agents/heartbeat",
            json={"name": f"a-{uuid.uuid4().hex[:8]}", "work_queue_id": queue["id"]},
        ).json()
        wait_for(lambda: count(a, "leadership_acquired") + count(b, "leadership_acquired") == 1)

        postgres_cluster.stop("fast")
        try:
            down = on_a.post(f"deployments/{deployment['id']}/runs", json={})
            assert down.status_code == 503, down.text
            assert down.headers.get("Retry-After")
        finally:
            postgres_cluster.start()

        wait_for(
            lambda: on_a.post(f"deployments/{deployment['id']}/runs", json={}).status_code == 201,
            timeout=20,
            what="replica a to write again",
        )
        wait_for(
            lambda: count(a, "leadership_acquired") + count(b, "leadership_acquired") >= 2,
            timeout=20,
            what="a leader again",
        )
        wait_for(
            lambda: count(b, "wakeup_listener_reconnected") >= 1,
            timeout=20,
            what="b's wake-up listener to reconnect",
        )
        # Take what is queued, then hold a claim on b and create a run on a.
        body = {"agent_id": agent["id"], "limit": 100}
        assert on_b.post(f"work_queues/{queue['id']}/claim", json=body).status_code == 200
        with ThreadPoolExecutor(1) as pool:
            for _ in range(3):
                held = pool.submit(
                    httpx.post,
                    f"{b.url}/work_queues/{queue['id']}/claim",
                    json={"agent_id": agent["id"], "wait_seconds": 10},
                    timeout=30,
                )
                time.sleep(0.3)
                created = on_a.post(f"deployments/{deployment['id']}/runs", json={})
                made = time.monotonic()
                assert created.status_code == 201, created.text
                answer = held.result(timeout=15)
                answered = time.monotonic()
                assert [c["flow_run"]["id"] for c in answer.json()] == [created.json()["id"]]
                assert answered - made < NOTIFIED, f"woken after {answered - made:.2f}s"
        for server in (a, b):
            log = (server.home / "server.log").read_text(errors="replace")
            assert "Exception in ASGI application" not in log  # no 500, ever
