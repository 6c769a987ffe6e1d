"""Work queues, deployments, agents and the error answers, over real HTTP to a real server.

Flow runs and their states are in test_server_runs.py, claims in test_server_claims.py.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest

from agent.models import AgentStatus
from agent.server.orm import AgentRow
from agent.server.views import agent_model
from tests.support import shared_server_on_each_database

if TYPE_CHECKING:
    from tests.support import Api, Server

pytestmark = pytest.mark.integration

server = shared_server_on_each_database()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def iso(moment: datetime) -> str:
    return moment.isoformat()


def parse(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


# --------------------------------------------------------------------------- health & docs


def test_health_says_it_is_flowagent(api: Api) -> None:
    response = api.get("health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["server"] == "flowagent"
    assert body["version"]


def test_openapi_docs_are_served(server: Server, api: Api) -> None:
    assert api.get(server.base + "/docs").status_code == 200
    paths = api.get(server.base + "/openapi.json").json()["paths"]
    assert "/api/work_queues/{queue_id}/claim" in paths
    assert "/api/flow_runs/{run_id}/set_state" in paths


# --------------------------------------------------------------------------- work queues


def test_work_queue_crud(api: Api) -> None:
    queue = api.queue(tags=["gpu"], concurrency_limit=2)
    assert queue["tags"] == ["gpu"]
    assert queue["concurrency_limit"] == 2
    assert queue["paused"] is False
    assert parse(queue["created"]).tzinfo is not None

    assert api.get(f"work_queues/{queue['id']}").json() == queue
    assert api.get(f"work_queues/name/{queue['name']}").json() == queue

    paused = api.patch(f"work_queues/{queue['id']}", json={"paused": True}).json()
    assert paused["paused"] is True
    assert paused["tags"] == ["gpu"] and paused["concurrency_limit"] == 2  # left-out fields stay

    changed = api.patch(
        f"work_queues/{queue['id']}", json={"tags": [], "concurrency_limit": None}
    ).json()
    assert changed["tags"] == [] and changed["concurrency_limit"] is None
    assert changed["paused"] is True

    assert api.delete(f"work_queues/{queue['id']}").status_code == 204
    missing = api.get(f"work_queues/{queue['id']}")
    assert missing.status_code == 404
    assert missing.json()["detail"] == f"work queue {queue['id']} not found"


def test_work_queues_are_listed_by_name(api: Api) -> None:
    suffix = uuid.uuid4().hex[:8]
    later = api.queue(name=f"zz-{suffix}")
    earlier = api.queue(name=f"aa-{suffix}")
    names = [q["name"] for q in api.get("work_queues").json()]
    assert names == sorted(names)
    assert names.index(earlier["name"]) < names.index(later["name"])


def test_duplicate_queue_name_is_409(api: Api) -> None:
    queue = api.queue()
    response = api.post("work_queues", json={"name": queue["name"]})
    assert response.status_code == 409
    assert queue["name"] in response.json()["detail"]


def test_queue_errors(api: Api) -> None:
    missing = uuid.uuid4()
    assert api.get(f"work_queues/{missing}").status_code == 404
    assert api.get(f"work_queues/name/{unique('nope')}").status_code == 404
    assert api.patch(f"work_queues/{missing}", json={"paused": True}).status_code == 404
    assert api.delete(f"work_queues/{missing}").status_code == 404

    invalid = api.post("work_queues", json={"name": ""})
    assert invalid.status_code == 422
    detail = invalid.json()["detail"]
    assert isinstance(detail, str) and "name" in detail

    negative = api.post("work_queues", json={"name": unique("q"), "concurrency_limit": -1})
    assert negative.status_code == 422
    not_uuid = api.get("work_queues/not-a-uuid")
    assert not_uuid.status_code == 422
    assert "queue_id" in not_uuid.json()["detail"]

    queue = api.queue()
    huge = api.patch(f"work_queues/{queue['id']}", json={"concurrency_limit": 2**80})
    assert huge.status_code == 422, huge.text  # too large for SQLite: refused, not a 500
    assert "out of range" in huge.json()["detail"]
    assert api.get(f"work_queues/{queue['id']}").json()["concurrency_limit"] is None


def test_queue_in_use_cannot_be_deleted(api: Api) -> None:
    queue = api.queue()
    deployment = api.deployment(queue)
    response = api.delete(f"work_queues/{queue['id']}")
    assert response.status_code == 409
    assert deployment["name"] in response.json()["detail"]

    assert api.delete(f"deployments/{deployment['id']}").status_code == 204
    assert api.delete(f"work_queues/{queue['id']}").status_code == 204


def test_queue_with_runs_in_flight_cannot_be_deleted(api: Api) -> None:
    queue = api.queue()
    deployment = api.deployment(queue)
    run = api.run(deployment)
    api.move(run["id"], "PENDING", "RUNNING")
    assert api.delete(f"deployments/{deployment['id']}").status_code == 204

    response = api.delete(f"work_queues/{queue['id']}")
    assert response.status_code == 409
    assert "in flight" in response.json()["detail"]

    api.move(run["id"], "COMPLETED")
    assert api.delete(f"work_queues/{queue['id']}").status_code == 204
    assert api.get(f"flow_runs/{run['id']}").status_code == 404


def test_preview_lists_scheduled_runs_due_within_hours(api: Api) -> None:
    queue = api.queue(tags=["etl"])
    deployment = api.deployment(queue, tags=["etl"])
    untagged = api.deployment(queue)
    now = datetime.now(UTC)
    in_two_hours = api.run(deployment, expected_start_time=iso(now + timedelta(hours=2)))
    in_half_hour = api.run(deployment, expected_start_time=iso(now + timedelta(minutes=30)))
    due = api.run(deployment, expected_start_time=iso(now - timedelta(minutes=1)))
    api.run(untagged)  # lacks the queue's tag: this queue never hands it out
    claimed = api.run(deployment, expected_start_time=iso(now - timedelta(minutes=2)))
    api.move(claimed["id"], "PENDING")

    ids = [r["id"] for r in api.get(f"work_queues/{queue['id']}/preview").json()]
    assert ids == [due["id"], in_half_hour["id"]]
    wider = api.get(f"work_queues/{queue['id']}/preview", params={"hours": 3}).json()
    assert [r["id"] for r in wider] == [due["id"], in_half_hour["id"], in_two_hours["id"]]
    assert api.get(f"work_queues/{uuid.uuid4()}/preview").status_code == 404


# --------------------------------------------------------------------------- deployments


def test_deployment_upsert_by_name(api: Api) -> None:
    queue = api.queue()
    other_queue = api.queue()
    created = api.deployment(queue, entrypoint=None, command=["echo", "hi"], retries=1)
    assert created["command"] == ["echo", "hi"]
    assert created["runner"] is None  # no runner named: the agent's default decides

    response = api.post(
        "deployments",
        json={
            "name": created["name"],
            "work_queue_id": other_queue["id"],
            "entrypoint": "flows/etl.py:main",
            "parameters": {"day": "mon"},
        },
    )
    assert response.status_code == 200
    updated = response.json()
    assert updated["id"] == created["id"]
    assert updated["created"] == created["created"]
    assert updated["entrypoint"] == "flows/etl.py:main" and updated["command"] is None
    assert updated["work_queue_id"] == other_queue["id"]
    assert updated["retries"] == 0  # the upsert replaces the whole definition
    assert parse(updated["updated"]) >= parse(created["updated"])

    assert api.get(f"deployments/{created['id']}").json() == updated
    assert api.get(f"deployments/name/{created['name']}").json() == updated
    names = [d["name"] for d in api.get("deployments").json()]
    assert names == sorted(names) and created["name"] in names


def test_deployment_errors(api: Api) -> None:
    missing_queue = uuid.uuid4()
    response = api.post(
        "deployments",
        json={"name": unique("d"), "work_queue_id": str(missing_queue), "command": ["true"]},
    )
    assert response.status_code == 404
    assert response.json()["detail"] == f"work queue {missing_queue} not found"

    queue = api.queue()
    both = api.post(
        "deployments",
        json={
            "name": unique("d"),
            "work_queue_id": queue["id"],
            "command": ["true"],
            "entrypoint": "a.py:f",
        },
    )
    assert both.status_code == 422
    assert "exactly one of 'entrypoint' or 'command'" in both.json()["detail"]

    assert api.get(f"deployments/{uuid.uuid4()}").status_code == 404
    assert api.get(f"deployments/name/{unique('nope')}").status_code == 404
    assert api.delete(f"deployments/{uuid.uuid4()}").status_code == 404
    assert api.post(f"deployments/{uuid.uuid4()}/runs", json={}).status_code == 404


def test_deleting_a_deployment_cancels_its_scheduled_runs(api: Api) -> None:
    queue = api.queue()
    deployment = api.deployment(queue)
    waiting = api.run(deployment)
    running = api.run(deployment)
    api.move(running["id"], "PENDING", "RUNNING")

    assert api.delete(f"deployments/{deployment['id']}").status_code == 204
    assert api.get(f"deployments/{deployment['id']}").status_code == 404

    cancelled = api.get_run(waiting["id"])
    assert cancelled["state"]["type"] == "CANCELLED"
    assert "deleted" in cancelled["state"]["message"]
    still_running = api.get_run(running["id"])
    assert still_running["state"]["type"] == "RUNNING"
    assert still_running["deployment_name"] == deployment["name"]
    assert api.move(running["id"], "COMPLETED")["state"]["type"] == "COMPLETED"


def test_creating_a_run_merges_the_deployment_defaults(api: Api) -> None:
    queue = api.queue()
    deployment = api.deployment(
        queue, parameters={"a": 1, "b": 1}, tags=["etl", "daily"], env={"X": "1", "Y": "1"}
    )
    before = datetime.now(UTC)
    run = api.run(deployment, parameters={"b": 2, "c": 3}, tags=["daily", "urgent"], env={"Y": "2"})
    assert run["parameters"] == {"a": 1, "b": 2, "c": 3}
    assert run["tags"] == ["etl", "daily", "urgent"]
    assert run["env"] == {"X": "1", "Y": "2"}
    assert run["name"].startswith(deployment["name"] + "-")
    assert run["deployment_id"] == deployment["id"]
    assert run["deployment_name"] == deployment["name"]
    assert run["work_queue_id"] == queue["id"]
    assert run["state"]["type"] == "SCHEDULED" and run["state"]["name"] == "Scheduled"
    assert run["agent_id"] is None and run["attempt"] == 1
    assert before - timedelta(seconds=1) <= parse(run["expected_start_time"]) <= datetime.now(UTC)

    later = datetime(2031, 1, 2, 3, 4, 5, tzinfo=UTC)
    scheduled = api.run(deployment, expected_start_time="2031-01-02T04:04:05+01:00")
    assert parse(scheduled["expected_start_time"]) == later
    naive = api.run(deployment, expected_start_time="2031-01-02T03:04:05")
    assert parse(naive["expected_start_time"]) == later  # naive means UTC


# --------------------------------------------------------------------------- agents


def test_heartbeat_upserts_by_name(api: Api) -> None:
    queue = api.queue()
    other_queue = api.queue()
    name = unique("agent")
    first = api.agent(queue, name=name, hostname="h1", pid=10, heartbeat_interval_seconds=2)
    assert first["status"] == AgentStatus.ONLINE
    assert first["metrics"] is None

    second = api.agent(
        other_queue,
        name=name,
        hostname="h1",
        tags=["gpu"],
        pid=11,
        runs_in_flight=3,
        metrics={"cpu_percent": 12.5, "memory_percent": 40, "load_1m": 0.5},
    )
    assert second["id"] == first["id"]
    assert second["work_queue_id"] == other_queue["id"]
    assert second["pid"] == 11 and second["runs_in_flight"] == 3 and second["tags"] == ["gpu"]
    assert second["metrics"]["cpu_percent"] == 12.5
    assert parse(second["last_heartbeat"]) >= parse(first["last_heartbeat"])

    listed = {a["name"]: a for a in api.get("agents").json()}
    assert listed[name]["id"] == first["id"]
    assert listed[name]["status"] == "ONLINE"
    names = [a["name"] for a in api.get("agents").json()]
    assert names == sorted(names)


def test_heartbeat_errors(api: Api) -> None:
    missing = uuid.uuid4()
    response = api.post(
        "agents/heartbeat", json={"name": unique("agent"), "work_queue_id": str(missing)}
    )
    assert response.status_code == 404
    assert response.json()["detail"] == f"work queue {missing} not found"
    assert api.get(f"agents/{uuid.uuid4()}/cancelling").status_code == 404


def test_agent_goes_offline_after_three_missed_heartbeats() -> None:
    beat = datetime(2030, 1, 1, tzinfo=UTC)
    row = AgentRow(
        id=uuid.uuid4(),
        name="a",
        work_queue_id=uuid.uuid4(),
        tags=[],
        hostname=None,
        pid=None,
        version=None,
        runs_in_flight=0,
        heartbeat_interval_seconds=10,
        metrics=None,
        last_heartbeat=beat,
        created=beat,
    )
    assert agent_model(row, beat + timedelta(seconds=34.9), 30).status == AgentStatus.ONLINE
    assert agent_model(row, beat + timedelta(seconds=35), 30).status == AgentStatus.OFFLINE


# --------------------------------------------------------------------------- a busy database


@contextlib.contextmanager
def write_lock_held(server: Server) -> Iterator[threading.Event]:
    """SQLite's write lock, taken by another process's connection until the event is set (or
    the block ends); reads go on meanwhile (WAL)."""
    if server.database_url is not None:
        pytest.skip("SQLite's write lock; PostgreSQL has none to hold from outside")
    lock_taken, release = threading.Event(), threading.Event()

    def hold() -> None:
        connection = sqlite3.connect(server.home / "flowagent.db", isolation_level=None)
        try:
            connection.execute("BEGIN IMMEDIATE")
            lock_taken.set()
            release.wait(30)
            connection.execute("ROLLBACK")
        finally:
            connection.close()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert lock_taken.wait(10)
        yield release
    finally:
        release.set()
        holder.join()


def test_a_locked_database_is_a_503_with_retry_after(server: Server, api: Api) -> None:
    queue = api.queue()
    with write_lock_held(server):
        # WAL: reads go on while another process holds the write lock.
        assert api.get(f"work_queues/{queue['id']}").status_code == 200
        started = time.monotonic()
        response = api.post("work_queues", json={"name": unique("q")})
        assert response.status_code == 503, response.text
        assert response.headers["Retry-After"] == "1"
        assert "busy" in response.json()["detail"]
        assert time.monotonic() - started >= 4  # it waited out busy_timeout first
    assert api.post("work_queues", json={"name": unique("q")}).status_code == 201


def test_a_write_waiting_for_another_process_holds_up_no_other_request(
    server: Server, api: Api
) -> None:
    """Heartbeats and claims run in the event loop's thread on SQLite; one that would wait for
    the write lock goes to a worker thread, and the server answers everything else meanwhile."""
    queue = api.queue()
    agent = api.agent(queue)
    with write_lock_held(server) as release, ThreadPoolExecutor(1) as pool:
        beat = {"name": agent["name"], "work_queue_id": queue["id"], "pid": 42}
        waiting = pool.submit(api.post, "agents/heartbeat", json=beat)
        time.sleep(0.5)
        assert not waiting.done()  # it waits for the lock...
        started = time.monotonic()
        # ...while a claim with nothing due (a read), a read and health answer at once.
        assert api.claim(queue, agent) == []
        assert api.get(f"work_queues/{queue['id']}").status_code == 200
        assert api.get("health").status_code == 200
        assert time.monotonic() - started < 3  # not behind the waiting write's busy timeout
        release.set()
        answered = waiting.result(timeout=10)
    assert answered.status_code == 200, answered.text
    assert answered.json()["pid"] == 42


def test_a_heartbeat_that_waited_for_the_database_drops_no_run_claimed_before_it_arrived(
    server: Server, api: Api
) -> None:
    """A heartbeat lists the runs its agent holds as it was sent. On a busy server it may wait
    seconds for the database; a run claimed just before it arrived is not in its list and must
    not be taken for one the agent dropped (it was: finished work then ran again)."""
    queue = api.queue()
    run = api.run(api.deployment(queue))
    agent = api.agent(queue, heartbeat_interval_seconds=0.2)  # a 2 s grace
    assert [c["flow_run"]["id"] for c in api.claim(queue, agent)] == [run["id"]]
    beat = {
        "name": agent["name"],
        "work_queue_id": queue["id"],
        "heartbeat_interval_seconds": 0.2,
        "run_ids": [],  # composed before the claim's answer came back
    }
    with write_lock_held(server) as release, ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(api.post, "agents/heartbeat", json=beat)
        time.sleep(3)  # past the grace: the beat is processed 3 s after it arrived
        release.set()
        assert waiting.result(timeout=30).status_code == 200
    kept = api.get_run(run["id"])
    assert kept["state"]["type"] == "PENDING" and kept["agent_id"] == agent["id"], kept

    # A list sent now, without the run, does drop it: the claim is older than the grace.
    assert api.post("agents/heartbeat", json=beat).status_code == 200
    dropped = api.get_run(run["id"])
    assert dropped["state"]["type"] == "SCHEDULED", dropped
    assert dropped["state"]["message"] == f"agent {agent['name']} no longer holds this claim"
