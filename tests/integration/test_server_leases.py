"""Leases and idempotent claims against a real server process with a short lease."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import pytest

from tests.support import server_fixture, wait_for

pytestmark = pytest.mark.integration

LEASE = 1.0


server = server_fixture("leases", {"AGENT_LEASE_SECONDS": str(LEASE)}, each_database=True)


def _setup(api: httpx.Client, retries: int = 0) -> tuple[dict[str, Any], str, str]:
    name = uuid.uuid4().hex[:10]
    queue = api.post("work_queues", json={"name": f"q-{name}"}).json()
    deployment = api.post(
        "deployments",
        json={
            "name": f"d-{name}",
            "work_queue_id": queue["id"],
            "command": ["true"],
            "retries": retries,
        },
    ).json()
    agent = api.post(
        "agents/heartbeat",
        json={"name": f"a-{name}", "work_queue_id": queue["id"], "heartbeat_interval_seconds": 0.2},
    ).json()
    return queue, deployment["id"], agent["id"]


def _claim(api: httpx.Client, queue: dict[str, Any], agent_id: str, **extra: Any) -> list[Any]:
    body = {"agent_id": agent_id, "limit": 10, **extra}
    response = api.post(f"work_queues/{queue['id']}/claim", json=body)
    assert response.status_code == 200, response.text
    return list(response.json())


def _state(api: httpx.Client, run_id: str) -> dict[str, Any]:
    return dict(api.get(f"flow_runs/{run_id}").json())


def test_heartbeat_answers_the_lease(api: httpx.Client) -> None:
    queue = api.post("work_queues", json={"name": f"q-{uuid.uuid4().hex}"}).json()
    record = api.post(
        "agents/heartbeat", json={"name": "lease-reader", "work_queue_id": queue["id"]}
    )
    assert record.json()["lease_seconds"] == LEASE


def test_a_name_is_held_by_its_live_host_and_free_once_its_lease_is_over(
    api: httpx.Client,
) -> None:
    queue = api.post("work_queues", json={"name": f"q-{uuid.uuid4().hex}"}).json()
    name = f"a-{uuid.uuid4().hex[:10]}"
    beat = {"name": name, "work_queue_id": queue["id"], "hostname": "h1", "pid": 10}
    first = api.post("agents/heartbeat", json=beat).json()

    refused = api.post("agents/heartbeat", json=beat | {"hostname": "h2", "pid": 20})
    assert refused.status_code == 409
    assert "held by a live agent on host h1" in refused.json()["detail"]
    # The refused beat changed nothing, and it did not renew the holder's lease.
    listed = {agent["name"]: agent for agent in api.get("agents").json()}[name]
    assert (listed["hostname"], listed["pid"]) == ("h1", 10)
    assert listed["last_heartbeat"] == first["last_heartbeat"]

    time.sleep(LEASE + 0.2)
    taken = api.post("agents/heartbeat", json=beat | {"hostname": "h2", "pid": 20})
    assert taken.status_code == 200, taken.text
    # The name is the identity: the new holder keeps the agent's id (and its runs).
    assert taken.json()["id"] == first["id"]
    assert (taken.json()["hostname"], taken.json()["pid"]) == ("h2", 20)


def test_an_agent_without_a_hostname_is_one_host(api: httpx.Client) -> None:
    queue = api.post("work_queues", json={"name": f"q-{uuid.uuid4().hex}"}).json()
    beat = {"name": f"a-{uuid.uuid4().hex[:10]}", "work_queue_id": queue["id"]}
    first = api.post("agents/heartbeat", json=beat).json()
    again = api.post("agents/heartbeat", json=beat | {"pid": 3})
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first["id"] and again.json()["pid"] == 3
    assert api.post("agents/heartbeat", json=beat | {"hostname": "h1"}).status_code == 409


def test_a_silent_agents_runs_are_crashed_then_retried(api: httpx.Client) -> None:
    queue, deployment_id, agent_id = _setup(api, retries=1)
    run = api.post(f"deployments/{deployment_id}/runs", json={}).json()
    assert [c["flow_run"]["id"] for c in _claim(api, queue, agent_id)] == [run["id"]]
    api.post(
        f"flow_runs/{run['id']}/set_state", json={"type": "RUNNING", "agent_id": agent_id}
    ).raise_for_status()

    retried = wait_for(
        lambda: (r := _state(api, run["id"]))["attempt"] == 2 and r,
        timeout=LEASE + 5,
        what="the lease to expire",
    )

    assert retried["state"]["type"] == "SCHEDULED"
    history = api.get(f"flow_runs/{run['id']}/states").json()
    crashed = [s for s in history if s["type"] == "CRASHED"]
    assert len(crashed) == 1
    assert crashed[0]["message"].startswith("agent a-")
    assert "stopped heartbeating at" in crashed[0]["message"]
    # The dead agent's late report about attempt 1 changes nothing.
    late = api.post(
        f"flow_runs/{run['id']}/set_state",
        json={"type": "COMPLETED", "agent_id": agent_id, "attempt": 1},
    )
    assert late.status_code == 409


def test_heartbeats_keep_the_lease(api: httpx.Client) -> None:
    queue, deployment_id, agent_id = _setup(api)
    run = api.post(f"deployments/{deployment_id}/runs", json={}).json()
    _claim(api, queue, agent_id)
    name = api.get("agents").json()
    beat = next(a for a in name if a["id"] == agent_id)
    deadline = time.monotonic() + LEASE * 3
    while time.monotonic() < deadline:
        api.post(
            "agents/heartbeat",
            json={
                "name": beat["name"],
                "work_queue_id": queue["id"],
                "heartbeat_interval_seconds": 0.2,
            },
        ).raise_for_status()
        time.sleep(0.2)
    assert _state(api, run["id"])["state"]["type"] == "PENDING"


def test_a_cancelling_run_of_a_silent_agent_ends_cancelled(api: httpx.Client) -> None:
    queue, deployment_id, agent_id = _setup(api)
    run = api.post(f"deployments/{deployment_id}/runs", json={}).json()
    _claim(api, queue, agent_id)
    api.post(f"flow_runs/{run['id']}/set_state", json={"type": "RUNNING"}).raise_for_status()
    api.post(f"flow_runs/{run['id']}/cancel").raise_for_status()

    done = wait_for(
        lambda: (r := _state(api, run["id"]))["state"]["type"] == "CANCELLED" and r,
        timeout=LEASE + 5,
        what="CANCELLED",
    )
    assert "stopped heartbeating" in done["state"]["message"]


def test_a_retried_claim_answers_the_same_runs(api: httpx.Client) -> None:
    queue, deployment_id, agent_id = _setup(api)
    runs = {api.post(f"deployments/{deployment_id}/runs", json={}).json()["id"] for _ in range(3)}
    claim_id = str(uuid.uuid4())

    first = {c["flow_run"]["id"] for c in _claim(api, queue, agent_id, claim_id=claim_id)}
    extra = api.post(f"deployments/{deployment_id}/runs", json={}).json()["id"]
    again = {c["flow_run"]["id"] for c in _claim(api, queue, agent_id, claim_id=claim_id)}

    assert first == runs
    assert again == runs  # not the new run: a retry takes nothing more
    assert _state(api, extra)["state"]["type"] == "SCHEDULED"
    fresh_id = str(uuid.uuid4())
    fresh = {c["flow_run"]["id"] for c in _claim(api, queue, agent_id, claim_id=fresh_id)}
    assert fresh == {extra}
    # Retried when nothing at all is due: still its answer, not the empty one of an idle queue.
    retried = {c["flow_run"]["id"] for c in _claim(api, queue, agent_id, claim_id=fresh_id)}
    assert retried == {extra}


def test_runs_an_agent_no_longer_lists_are_resolved(api: httpx.Client) -> None:
    queue, deployment_id, agent_id = _setup(api)
    name = next(a["name"] for a in api.get("agents").json() if a["id"] == agent_id)
    running = api.post(f"deployments/{deployment_id}/runs", json={}).json()
    pending = api.post(f"deployments/{deployment_id}/runs", json={}).json()
    kept = api.post(f"deployments/{deployment_id}/runs", json={}).json()
    _claim(api, queue, agent_id)
    for run in (running, kept):
        api.post(f"flow_runs/{run['id']}/set_state", json={"type": "RUNNING"}).raise_for_status()
    beat = {"name": name, "work_queue_id": queue["id"], "heartbeat_interval_seconds": 0.2}

    # Fresh claims are not touched: the agent may not have its answer yet.
    api.post("agents/heartbeat", json=beat | {"run_ids": [kept["id"]]}).raise_for_status()
    assert _state(api, running["id"])["state"]["type"] == "RUNNING"
    for _ in range(11):  # past the 2 s grace, keeping the lease with beats that list nothing
        time.sleep(0.2)
        api.post("agents/heartbeat", json=beat).raise_for_status()
    api.post("agents/heartbeat", json=beat | {"run_ids": [kept["id"]]}).raise_for_status()

    crashed = _state(api, running["id"])
    assert crashed["state"]["type"] == "CRASHED"
    assert crashed["state"]["message"] == f"agent {name} no longer runs it"
    released = _state(api, pending["id"])
    assert released["state"]["type"] == "SCHEDULED" and released["agent_id"] is None
    assert _state(api, kept["id"])["state"]["type"] == "RUNNING"
