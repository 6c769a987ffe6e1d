"""A claim held in a long poll on replica B is woken by a run created through replica A
(PostgreSQL LISTEN/NOTIFY), not by B's once-a-second claim sweep."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.replicas import client, replicas
from tests.support import Server, make_deployment, make_queue

pytestmark = pytest.mark.integration

# From the request that made work available to the held claim's answer (as in
# test_server_claims.py): well under the 1 s sweep, so only a wake-up can make it.
NOTIFIED = 0.5
ROUNDS = 5  # so that a lucky sweep cannot pass for the wake-up


def held_claim(
    pool: ThreadPoolExecutor, server: Server, queue: dict[str, Any], agent: dict[str, Any]
) -> Future[tuple[list[str], float]]:
    def claim() -> tuple[list[str], float]:
        with httpx.Client(timeout=30) as http:
            response = http.post(
                f"{server.url}/work_queues/{queue['id']}/claim",
                json={"agent_id": agent["id"], "wait_seconds": 10},
            )
            answered = time.monotonic()
        assert response.status_code == 200, response.text
        return [c["flow_run"]["id"] for c in response.json()], answered

    return pool.submit(claim)


def test_a_run_created_on_one_replica_wakes_a_claim_held_on_the_other(
    tmp_path: Path, postgres_url: str
) -> None:
    with replicas(tmp_path, postgres_url) as (a, b), client(a) as on_a, client(b) as on_b:
        queue = make_queue(on_a)
        deployment = make_deployment(on_a, queue, command=["true"])
        response = on_b.post(
            "agents/heartbeat",
            json={"name": f"a-{uuid.uuid4().hex[:8]}", "work_queue_id": queue["id"]},
        )
        agent = response.json()
        with ThreadPoolExecutor(1) as pool:
            for _ in range(ROUNDS):
                held = held_claim(pool, b, queue, agent)
                time.sleep(0.3)  # the claim reaches B and waits (nothing is due)
                assert not held.done()
                created = on_a.post(f"deployments/{deployment['id']}/runs", json={})
                made = time.monotonic()
                assert created.status_code == 201, created.text
                ids, answered = held.result(timeout=15)
                assert ids == [created.json()["id"]]
                assert answered - made < NOTIFIED, f"woken after {answered - made:.2f}s"
