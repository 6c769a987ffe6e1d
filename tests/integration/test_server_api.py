"""The embedded server's HTTP API (docs/API.md), over real HTTP against a real server process."""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest

from agent.models import ALLOWED_TRANSITIONS, AgentStatus, StateType, transition_error
from agent.server.orm import AgentRow
from agent.server.views import agent_model

if TYPE_CHECKING:
    from tests.integration.conftest import Api, ServerProcess

pytestmark = pytest.mark.integration


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def iso(moment: datetime) -> str:
    return moment.isoformat()


def parse(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


# --------------------------------------------------------------------------- health & docs


def test_health_says_it_is_flowagent(api: Api) -> None:
    response = api.http.get("health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["server"] == "flowagent"
    assert body["version"]


def test_openapi_docs_are_served(server: ServerProcess, api: Api) -> None:
    assert api.http.get(server.url + "/docs").status_code == 200
    paths = api.http.get(server.url + "/openapi.json").json()["paths"]
    assert "/api/work_queues/{queue_id}/claim" in paths
    assert "/api/flow_runs/{run_id}/set_state" in paths


# --------------------------------------------------------------------------- work queues


def test_work_queue_crud(api: Api) -> None:
    queue = api.queue(tags=["gpu"], concurrency_limit=2)
    assert queue["tags"] == ["gpu"]
    assert queue["concurrency_limit"] == 2
    assert queue["paused"] is False
    assert parse(queue["created"]).tzinfo is not None

    assert api.http.get(f"work_queues/{queue['id']}").json() == queue
    assert api.http.get(f"work_queues/name/{queue['name']}").json() == queue

    paused = api.http.patch(f"work_queues/{queue['id']}", json={"paused": True}).json()
    assert paused["paused"] is True
    assert paused["tags"] == ["gpu"] and paused["concurrency_limit"] == 2  # left-out fields stay

    changed = api.http.patch(
        f"work_queues/{queue['id']}", json={"tags": [], "concurrency_limit": None}
    ).json()
    assert changed["tags"] == [] and changed["concurrency_limit"] is None
    assert changed["paused"] is True

    assert api.http.delete(f"work_queues/{queue['id']}").status_code == 204
    missing = api.http.get(f"work_queues/{queue['id']}")
    assert missing.status_code == 404
    assert missing.json()["detail"] == f"work queue {queue['id']} not found"


def test_work_queues_are_listed_by_name(api: Api) -> None:
    suffix = uuid.uuid4().hex[:8]
    later = api.queue(name=f"zz-{suffix}")
    earlier = api.queue(name=f"aa-{suffix}")
    names = [q["name"] for q in api.http.get("work_queues").json()]
    assert names == sorted(names)
    assert names.index(earlier["name"]) < names.index(later["name"])


def test_duplicate_queue_name_is_409(api: Api) -> None:
    queue = api.queue()
    response = api.http.post("work_queues", json={"name": queue["name"]})
    assert response.status_code == 409
    assert queue["name"] in response.json()["detail"]


def test_queue_errors(api: Api) -> None:
    missing = uuid.uuid4()
    assert api.http.get(f"work_queues/{missing}").status_code == 404
    assert api.http.get(f"work_queues/name/{unique('nope')}").status_code == 404
    assert api.http.patch(f"work_queues/{missing}", json={"paused": True}).status_code == 404
    assert api.http.delete(f"work_queues/{missing}").status_code == 404

    invalid = api.http.post("work_queues", json={"name": ""})
    assert invalid.status_code == 422
    detail = invalid.json()["detail"]
    assert isinstance(detail, str) and "name" in detail

    negative = api.http.post("work_queues", json={"name": unique("q"), "concurrency_limit": -1})
    assert negative.status_code == 422
    not_uuid = api.http.get("work_queues/not-a-uuid")
    assert not_uuid.status_code == 422
    assert "queue_id" in not_uuid.json()["detail"]


def test_queue_in_use_cannot_be_deleted(api: Api) -> None:
    queue = api.queue()
    deployment = api.deployment(queue)
    response = api.http.delete(f"work_queues/{queue['id']}")
    assert response.status_code == 409
    assert deployment["name"] in response.json()["detail"]

    assert api.http.delete(f"deployments/{deployment['id']}").status_code == 204
    assert api.http.delete(f"work_queues/{queue['id']}").status_code == 204


def test_queue_with_runs_in_flight_cannot_be_deleted(api: Api) -> None:
    queue = api.queue()
    deployment = api.deployment(queue)
    run = api.run(deployment)
    api.move(run["id"], "PENDING", "RUNNING")
    assert api.http.delete(f"deployments/{deployment['id']}").status_code == 204

    response = api.http.delete(f"work_queues/{queue['id']}")
    assert response.status_code == 409
    assert "in flight" in response.json()["detail"]

    api.move(run["id"], "COMPLETED")
    assert api.http.delete(f"work_queues/{queue['id']}").status_code == 204
    assert api.http.get(f"flow_runs/{run['id']}").status_code == 404


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

    ids = [r["id"] for r in api.http.get(f"work_queues/{queue['id']}/preview").json()]
    assert ids == [due["id"], in_half_hour["id"]]
    wider = api.http.get(f"work_queues/{queue['id']}/preview", params={"hours": 3}).json()
    assert [r["id"] for r in wider] == [due["id"], in_half_hour["id"], in_two_hours["id"]]
    assert api.http.get(f"work_queues/{uuid.uuid4()}/preview").status_code == 404


# --------------------------------------------------------------------------- deployments


def test_deployment_upsert_by_name(api: Api) -> None:
    queue = api.queue()
    other_queue = api.queue()
    created = api.deployment(queue, entrypoint=None, command=["echo", "hi"], retries=1)
    assert created["command"] == ["echo", "hi"]
    assert created["runner"] == "subprocess"

    response = api.http.post(
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

    assert api.http.get(f"deployments/{created['id']}").json() == updated
    assert api.http.get(f"deployments/name/{created['name']}").json() == updated
    names = [d["name"] for d in api.http.get("deployments").json()]
    assert names == sorted(names) and created["name"] in names


def test_deployment_errors(api: Api) -> None:
    missing_queue = uuid.uuid4()
    response = api.http.post(
        "deployments",
        json={"name": unique("d"), "work_queue_id": str(missing_queue), "command": ["true"]},
    )
    assert response.status_code == 404
    assert response.json()["detail"] == f"work queue {missing_queue} not found"

    queue = api.queue()
    both = api.http.post(
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

    assert api.http.get(f"deployments/{uuid.uuid4()}").status_code == 404
    assert api.http.get(f"deployments/name/{unique('nope')}").status_code == 404
    assert api.http.delete(f"deployments/{uuid.uuid4()}").status_code == 404
    assert api.http.post(f"deployments/{uuid.uuid4()}/runs", json={}).status_code == 404


def test_deleting_a_deployment_cancels_its_scheduled_runs(api: Api) -> None:
    queue = api.queue()
    deployment = api.deployment(queue)
    waiting = api.run(deployment)
    running = api.run(deployment)
    api.move(running["id"], "PENDING", "RUNNING")

    assert api.http.delete(f"deployments/{deployment['id']}").status_code == 204
    assert api.http.get(f"deployments/{deployment['id']}").status_code == 404

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


# --------------------------------------------------------------------------- flow runs


def test_listing_runs_filters_and_orders_newest_first(api: Api) -> None:
    queue = api.queue()
    first = api.deployment(queue)
    second = api.deployment(queue)
    agent = api.agent(queue)
    runs = [api.run(first), api.run(second), api.run(first)]
    api.move(runs[1]["id"], "PENDING", "RUNNING")
    claimed = api.claim(queue, agent, limit=1)
    assert [c["flow_run"]["id"] for c in claimed] == [runs[0]["id"]]

    def ids(**params: Any) -> list[str]:
        response = api.http.get("flow_runs", params=params)
        assert response.status_code == 200, response.text
        return [r["id"] for r in response.json()]

    assert ids(work_queue_id=queue["id"]) == [r["id"] for r in reversed(runs)]
    assert ids(deployment_id=first["id"]) == [runs[2]["id"], runs[0]["id"]]
    assert ids(work_queue_id=queue["id"], state=["RUNNING"]) == [runs[1]["id"]]
    assert ids(work_queue_id=queue["id"], state=["RUNNING", "PENDING"]) == [
        runs[1]["id"],
        runs[0]["id"],
    ]
    assert ids(agent_id=agent["id"]) == [runs[0]["id"]]
    assert ids(work_queue_id=queue["id"], limit=1) == [runs[2]["id"]]
    assert api.http.get("flow_runs", params={"limit": 1001}).status_code == 422
    assert api.http.get("flow_runs", params={"state": "NOPE"}).status_code == 422


def test_run_errors(api: Api) -> None:
    missing = uuid.uuid4()
    assert api.http.get(f"flow_runs/{missing}").json()["detail"] == f"flow run {missing} not found"
    assert api.http.get(f"flow_runs/{missing}/states").status_code == 404
    assert api.set_state(str(missing), "RUNNING").status_code == 404
    assert api.http.post(f"flow_runs/{missing}/cancel").status_code == 404
    assert api.http.patch(f"flow_runs/{missing}", json={"runner_info": {}}).status_code == 404
    assert api.set_state(str(missing), "ASLEEP").status_code == 422


def _run_in(api: Api, state: StateType) -> dict[str, Any]:
    """A fresh run brought to ``state`` through allowed transitions."""
    queue = api.queue()
    run = api.run(api.deployment(queue))
    paths: dict[StateType, tuple[str, ...]] = {
        StateType.SCHEDULED: (),
        StateType.PENDING: ("PENDING",),
        StateType.RUNNING: ("PENDING", "RUNNING"),
        StateType.COMPLETED: ("PENDING", "RUNNING", "COMPLETED"),
        StateType.FAILED: ("PENDING", "RUNNING", "FAILED"),
        StateType.CRASHED: ("PENDING", "RUNNING", "CRASHED"),
        StateType.CANCELLING: ("PENDING", "RUNNING", "CANCELLING"),
        StateType.CANCELLED: ("CANCELLED",),
    }
    if paths[state]:
        run = api.move(run["id"], *paths[state])
    assert run["state"]["type"] == state.value
    return run


@pytest.mark.parametrize("current", list(StateType), ids=str)
def test_every_transition_rule(api: Api, current: StateType) -> None:
    for proposed in StateType:
        run = _run_in(api, current)
        response = api.set_state(run["id"], proposed.value)
        if proposed in ALLOWED_TRANSITIONS[current]:
            assert response.status_code == 200, (current, proposed, response.text)
            assert response.json()["state"]["type"] == proposed.value
        else:
            assert response.status_code == 409, (current, proposed, response.text)
            assert response.json()["detail"] == transition_error(current, proposed)
            assert api.get_run(run["id"])["state"]["type"] == current.value


def test_transitions_record_history_times_and_runner_info(api: Api) -> None:
    queue = api.queue()
    run = api.run(api.deployment(queue))
    pending = api.move(run["id"], "PENDING")
    assert pending["start_time"] is None and pending["end_time"] is None

    response = api.set_state(
        run["id"], "RUNNING", name="Started", message="pid 42", runner_info={"pid": 42}
    )
    running = response.json()
    assert running["state"]["name"] == "Started" and running["state"]["message"] == "pid 42"
    assert running["start_time"] is not None and running["end_time"] is None
    assert running["runner_info"] == {"pid": 42}

    patched = api.http.patch(f"flow_runs/{run['id']}", json={"runner_info": {"host": "h1"}})
    assert patched.json()["runner_info"] == {"pid": 42, "host": "h1"}

    done = api.set_state(run["id"], "COMPLETED", runner_info={"exit_code": 0}).json()
    assert done["state"]["name"] == "Completed"
    assert done["runner_info"] == {"pid": 42, "host": "h1", "exit_code": 0}
    assert done["start_time"] == running["start_time"]
    assert parse(done["end_time"]) >= parse(done["start_time"])

    history = api.http.get(f"flow_runs/{run['id']}/states").json()
    assert [s["type"] for s in history] == ["SCHEDULED", "PENDING", "RUNNING", "COMPLETED"]
    assert [s["name"] for s in history] == ["Scheduled", "Pending", "Started", "Completed"]
    stamps = [parse(s["timestamp"]) for s in history]
    assert stamps == sorted(stamps)


def test_only_the_claiming_agent_may_report(api: Api) -> None:
    queue = api.queue()
    run = api.run(api.deployment(queue))
    owner = api.agent(queue)
    intruder = api.agent(queue)
    assert len(api.claim(queue, owner)) == 1

    refused = api.set_state(run["id"], "RUNNING", agent_id=intruder["id"])
    assert refused.status_code == 409
    assert refused.json()["detail"] == f"run {run['id']} is claimed by agent {owner['id']}"
    assert api.get_run(run["id"])["state"]["type"] == "PENDING"

    accepted = api.set_state(run["id"], "RUNNING", agent_id=owner["id"])
    assert accepted.status_code == 200
    assert accepted.json()["agent_id"] == owner["id"]


def test_handing_a_run_back_frees_it_for_another_agent(api: Api) -> None:
    queue = api.queue()
    run = api.run(api.deployment(queue))
    first = api.agent(queue)
    second = api.agent(queue)
    assert len(api.claim(queue, first)) == 1

    handed_back = api.set_state(
        run["id"], "SCHEDULED", agent_id=first["id"], message="runner not installed"
    ).json()
    assert handed_back["state"]["type"] == "SCHEDULED" and handed_back["agent_id"] is None

    again = api.claim(queue, second)
    assert [c["flow_run"]["id"] for c in again] == [run["id"]]
    assert again[0]["flow_run"]["agent_id"] == second["id"]


def test_a_failed_run_is_retried_as_a_new_attempt(api: Api) -> None:
    queue = api.queue()
    deployment = api.deployment(queue, retries=1, retry_delay_seconds=0)
    run = api.run(deployment, parameters={"x": 1})
    api.move(run["id"], "PENDING", "RUNNING", "FAILED")

    attempts = api.http.get("flow_runs", params={"deployment_id": deployment["id"]}).json()
    assert len(attempts) == 2
    retry = attempts[0]
    assert retry["id"] != run["id"]
    assert retry["attempt"] == 2 and retry["name"] == run["name"]
    assert retry["state"]["type"] == "SCHEDULED" and retry["parameters"] == {"x": 1}
    assert run["id"] in retry["state"]["message"]

    api.move(retry["id"], "PENDING", "RUNNING", "FAILED")
    assert len(api.http.get("flow_runs", params={"deployment_id": deployment["id"]}).json()) == 2


# --------------------------------------------------------------------------- cancel


def test_cancel_semantics(api: Api) -> None:
    scheduled = _run_in(api, StateType.SCHEDULED)
    pending = _run_in(api, StateType.PENDING)
    for run in (scheduled, pending):
        cancelled = api.http.post(f"flow_runs/{run['id']}/cancel").json()
        assert cancelled["state"]["type"] == "CANCELLED"
        assert cancelled["state"]["message"] == "cancelled by user"
        assert cancelled["end_time"] is not None

    queue = api.queue()
    run = api.run(api.deployment(queue))
    agent = api.agent(queue)
    api.claim(queue, agent)
    api.move(run["id"], "RUNNING")
    cancelling = api.http.post(f"flow_runs/{run['id']}/cancel").json()
    assert cancelling["state"]["type"] == "CANCELLING"
    assert cancelling["state"]["message"] == "cancelled by user"
    assert api.http.get(f"agents/{agent['id']}/cancelling").json() == [run["id"]]

    again = api.http.post(f"flow_runs/{run['id']}/cancel")
    assert again.status_code == 200 and again.json()["state"] == cancelling["state"]
    history = api.http.get(f"flow_runs/{run['id']}/states").json()
    assert [s["type"] for s in history][-1:] == ["CANCELLING"]
    assert len(history) == 4

    assert api.move(run["id"], "CANCELLED")["end_time"] is not None
    assert api.http.get(f"agents/{agent['id']}/cancelling").json() == []
    refused = api.http.post(f"flow_runs/{run['id']}/cancel")
    assert refused.status_code == 409
    assert refused.json()["detail"] == transition_error(StateType.CANCELLED, StateType.CANCELLED)

    completed = _run_in(api, StateType.COMPLETED)
    assert api.http.post(f"flow_runs/{completed['id']}/cancel").status_code == 409


# --------------------------------------------------------------------------- logs


def test_logs_append_and_page_with_after(api: Api) -> None:
    run = api.run(api.deployment(api.queue()))
    now = datetime.now(UTC)
    lines = [
        {"timestamp": iso(now), "stream": "stdout", "line": "one"},
        {"timestamp": iso(now), "stream": "stderr", "level": "ERROR", "line": "two"},
        {"timestamp": iso(now), "stream": "agent", "line": "three"},
    ]
    posted = api.http.post(f"flow_runs/{run['id']}/logs", json=lines)
    assert posted.status_code == 201 and posted.json() == {"count": 3}
    other = api.run(api.deployment(api.queue()))
    api.http.post(f"flow_runs/{other['id']}/logs", json=lines[:1])

    got = api.http.get(f"flow_runs/{run['id']}/logs").json()
    assert [g["line"] for g in got] == ["one", "two", "three"]
    assert [g["stream"] for g in got] == ["stdout", "stderr", "agent"]
    assert got[1]["level"] == "ERROR" and got[0]["level"] == "INFO"
    assert all(g["flow_run_id"] == run["id"] for g in got)
    ids = [g["id"] for g in got]
    assert ids == sorted(ids)

    after_first = api.http.get(f"flow_runs/{run['id']}/logs", params={"after": ids[0]}).json()
    assert [g["line"] for g in after_first] == ["two", "three"]
    page = api.http.get(f"flow_runs/{run['id']}/logs", params={"limit": 2}).json()
    assert [g["line"] for g in page] == ["one", "two"]
    assert api.http.get(f"flow_runs/{run['id']}/logs", params={"after": ids[-1]}).json() == []

    api.http.post(f"flow_runs/{run['id']}/logs", json=[{**lines[0], "line": "four"}])
    follow = api.http.get(f"flow_runs/{run['id']}/logs", params={"after": ids[-1]}).json()
    assert [g["line"] for g in follow] == ["four"]

    assert api.http.post(f"flow_runs/{uuid.uuid4()}/logs", json=lines).status_code == 404
    assert api.http.get(f"flow_runs/{uuid.uuid4()}/logs").status_code == 404
    bad = api.http.post(f"flow_runs/{run['id']}/logs", json=[{"line": "no stream"}])
    assert bad.status_code == 422


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

    listed = {a["name"]: a for a in api.http.get("agents").json()}
    assert listed[name]["id"] == first["id"]
    assert listed[name]["status"] == "ONLINE"
    names = [a["name"] for a in api.http.get("agents").json()]
    assert names == sorted(names)


def test_heartbeat_errors(api: Api) -> None:
    missing = uuid.uuid4()
    response = api.http.post(
        "agents/heartbeat", json={"name": unique("agent"), "work_queue_id": str(missing)}
    )
    assert response.status_code == 404
    assert response.json()["detail"] == f"work queue {missing} not found"
    assert api.http.get(f"agents/{uuid.uuid4()}/cancelling").status_code == 404


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
    assert agent_model(row, beat + timedelta(seconds=34.9)).status == AgentStatus.ONLINE
    assert agent_model(row, beat + timedelta(seconds=35)).status == AgentStatus.OFFLINE


# --------------------------------------------------------------------------- a busy database


def test_a_locked_database_is_a_503_with_retry_after(server: ServerProcess, api: Api) -> None:
    queue = api.queue()
    lock_taken = threading.Event()
    release = threading.Event()

    def hold_the_write_lock() -> None:
        connection = sqlite3.connect(server.home / "flowagent.db", isolation_level=None)
        try:
            connection.execute("BEGIN IMMEDIATE")
            lock_taken.set()
            release.wait(30)
            connection.execute("ROLLBACK")
        finally:
            connection.close()

    holder = threading.Thread(target=hold_the_write_lock)
    holder.start()
    try:
        assert lock_taken.wait(10)
        # WAL: reads go on while another process holds the write lock.
        assert api.http.get(f"work_queues/{queue['id']}").status_code == 200
        started = time.monotonic()
        response = api.http.post("work_queues", json={"name": unique("q")})
        assert response.status_code == 503, response.text
        assert response.headers["Retry-After"] == "1"
        assert "busy" in response.json()["detail"]
        assert time.monotonic() - started >= 4  # it waited out busy_timeout first
    finally:
        release.set()
        holder.join()
    assert api.http.post("work_queues", json={"name": unique("q")}).status_code == 201
