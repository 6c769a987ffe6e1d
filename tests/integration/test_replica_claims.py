"""Claims stay atomic across server replicas on one PostgreSQL: many claimers, over real HTTP,
spread over two replicas, take every run exactly once; a claim retried (same ``claim_id``)
through the other replica answers what the first took, and takes nothing more."""

from __future__ import annotations

import random
import threading
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.replicas import client, replicas
from tests.support import make_deployment, make_queue

pytestmark = pytest.mark.integration

RUNS = 300
CLAIMERS = 16


def heartbeat(api: httpx.Client, queue: dict[str, Any]) -> dict[str, Any]:
    response = api.post(
        "agents/heartbeat", json={"name": f"a-{uuid.uuid4().hex[:8]}", "work_queue_id": queue["id"]}
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_every_run_is_claimed_once_across_two_replicas(tmp_path: Path, postgres_url: str) -> None:
    with replicas(tmp_path, postgres_url) as servers:
        apis = [client(server) for server in servers]
        queue = make_queue(apis[0])
        deployment = make_deployment(apis[1], queue, command=["true"])
        created: set[str] = set()
        for i in range(RUNS):  # half created through each replica
            response = apis[i % 2].post(f"deployments/{deployment['id']}/runs", json={})
            assert response.status_code == 201, response.text
            created.add(response.json()["id"])
        agents = [heartbeat(apis[i % 2], queue) for i in range(CLAIMERS)]

        taken: list[tuple[str, str]] = []  # (run id, agent id), one per run handed out
        lock = threading.Lock()
        replays = Counter[str]()

        def claimer(index: int) -> None:
            agent = agents[index]
            rng = random.Random(index)
            with httpx.Client(timeout=30) as http:
                empty = 0
                while empty < 3:
                    server = servers[rng.randrange(2)]
                    body = {"agent_id": agent["id"], "limit": rng.randint(1, 4)}
                    body["claim_id"] = str(uuid.uuid4())
                    url = f"{server.url}/work_queues/{queue['id']}/claim"
                    response = http.post(url, json=body)
                    assert response.status_code == 200, response.text
                    got = sorted(c["flow_run"]["id"] for c in response.json())
                    if not got:
                        empty += 1
                        continue
                    empty = 0
                    with lock:
                        taken.extend((run_id, agent["id"]) for run_id in got)
                    if rng.random() < 0.2:
                        # The answer "was lost": retry through the other replica.
                        other = servers[1 - servers.index(server)]
                        again = http.post(f"{other.url}/work_queues/{queue['id']}/claim", json=body)
                        assert again.status_code == 200, again.text
                        assert sorted(c["flow_run"]["id"] for c in again.json()) == got
                        with lock:
                            replays[agent["id"]] += 1

        with ThreadPoolExecutor(CLAIMERS) as pool:
            for future in [pool.submit(claimer, i) for i in range(CLAIMERS)]:
                future.result()

        counts = Counter(run_id for run_id, _ in taken)
        twice = [run_id for run_id, n in counts.items() if n > 1]
        assert twice == [], f"{len(twice)} runs handed out more than once"
        assert set(counts) == created, f"{len(created - set(counts))} runs never claimed"
        assert sum(replays.values()) > 0  # the idempotent retry was exercised
        # What the database holds agrees: each run PENDING for the agent that got it.
        holder = dict(taken)
        for run_id in random.Random(0).sample(sorted(created), 40):
            run = apis[0].get(f"flow_runs/{run_id}").json()
            assert run["state"]["type"] == "PENDING"
            assert run["agent_id"] == holder[run_id]
        for api in apis:
            api.close()
