"""Flow runs over real HTTP: listing, every state transition, ownership, retries, cancel, logs."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest

from agent.models import ALLOWED_TRANSITIONS, StateType, transition_error
from tests.support import shared_server_on_each_database

if TYPE_CHECKING:
    from tests.support import Api

pytestmark = pytest.mark.integration

server = shared_server_on_each_database()


def iso(moment: datetime) -> str:
    return moment.isoformat()


def parse(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


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
        response = api.get("flow_runs", params=params)
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
    assert api.get("flow_runs", params={"limit": 1001}).status_code == 422
    assert api.get("flow_runs", params={"state": "NOPE"}).status_code == 422


def test_run_errors(api: Api) -> None:
    missing = uuid.uuid4()
    assert api.get(f"flow_runs/{missing}").json()["detail"] == f"flow run {missing} not found"
    assert api.get(f"flow_runs/{missing}/states").status_code == 404
    assert api.set_state(str(missing), "RUNNING").status_code == 404
    assert api.post(f"flow_runs/{missing}/cancel").status_code == 404
    assert api.patch(f"flow_runs/{missing}", json={"runner_info": {}}).status_code == 404
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

    patched = api.patch(f"flow_runs/{run['id']}", json={"runner_info": {"host": "h1"}})
    assert patched.json()["runner_info"] == {"pid": 42, "host": "h1"}

    done = api.set_state(run["id"], "COMPLETED", runner_info={"exit_code": 0}).json()
    assert done["state"]["name"] == "Completed"
    assert done["runner_info"] == {"pid": 42, "host": "h1", "exit_code": 0}
    assert done["start_time"] == running["start_time"]
    assert parse(done["end_time"]) >= parse(done["start_time"])

    history = api.get(f"flow_runs/{run['id']}/states").json()
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


def test_a_late_report_about_a_handed_back_run_cannot_end_it(api: Api) -> None:
    """Once its claim is over (handed back, or released by the server) the run is free: a
    report its old holder sends late must not end a run that no one ran."""
    queue = api.queue()
    run = api.run(api.deployment(queue))
    holder = api.agent(queue)
    assert len(api.claim(queue, holder)) == 1
    handed_back = api.set_state(run["id"], "SCHEDULED", agent_id=holder["id"])
    assert handed_back.status_code == 200, handed_back.text

    late = api.set_state(run["id"], "CANCELLED", agent_id=holder["id"], attempt=1)
    assert late.status_code == 409, late.text
    assert late.json()["detail"] == (
        f"run {run['id']} is not held by agent {holder['id']}: report dropped"
    )
    assert api.get_run(run["id"])["state"]["type"] == "SCHEDULED"
    # A person may still cancel it.
    cancelled = api.set_state(run["id"], "CANCELLED")
    assert cancelled.status_code == 200, cancelled.text


def test_a_failed_or_crashed_run_is_retried_as_the_next_attempt_of_the_same_run(api: Api) -> None:
    queue = api.queue()
    deployment = api.deployment(queue, retries=2, retry_delay_seconds=0)
    run = api.run(deployment, parameters={"x": 1})

    after_first = api.move(run["id"], "PENDING", "RUNNING", "FAILED")
    assert after_first["id"] == run["id"]
    assert after_first["attempt"] == 2
    assert after_first["state"]["type"] == "SCHEDULED"
    assert after_first["state"]["name"] == "AwaitingRetry"
    assert after_first["state"]["message"] == "attempt 1 failed; attempt 2 of 3 in 0s"
    assert after_first["agent_id"] is None and after_first["parameters"] == {"x": 1}

    after_second = api.move(run["id"], "PENDING", "RUNNING", "CRASHED")
    assert after_second["attempt"] == 3 and after_second["state"]["type"] == "SCHEDULED"

    final = api.move(run["id"], "PENDING", "RUNNING", "FAILED")
    assert final["attempt"] == 3 and final["state"]["type"] == "FAILED"
    history = [s["type"] for s in api.get(f"flow_runs/{run['id']}/states").json()]
    assert history == [
        "SCHEDULED", "PENDING", "RUNNING", "FAILED",
        "SCHEDULED", "PENDING", "RUNNING", "CRASHED",
        "SCHEDULED", "PENDING", "RUNNING", "FAILED",
    ]  # fmt: skip
    assert len(api.get("flow_runs", params={"deployment_id": deployment["id"]}).json()) == 1


def test_a_report_about_an_attempt_that_is_over_is_refused(api: Api) -> None:
    queue = api.queue()
    deployment = api.deployment(queue, retries=1, retry_delay_seconds=0)
    run = api.run(deployment)
    api.move(run["id"], "PENDING", "RUNNING")
    api.post(f"flow_runs/{run['id']}/set_state", json={"type": "CRASHED", "attempt": 1})
    api.move(run["id"], "PENDING", "RUNNING")  # attempt 2 is running somewhere else now

    late = api.post(f"flow_runs/{run['id']}/set_state", json={"type": "COMPLETED", "attempt": 1})

    assert late.status_code == 409
    assert "stale report: attempt 1" in late.json()["detail"]
    current = api.get(f"flow_runs/{run['id']}").json()
    assert current["state"]["type"] == "RUNNING" and current["attempt"] == 2
    ok = api.post(f"flow_runs/{run['id']}/set_state", json={"type": "COMPLETED", "attempt": 2})
    assert ok.status_code == 200, ok.text


def test_cancelled_runs_are_not_retried(api: Api) -> None:
    queue = api.queue()
    deployment = api.deployment(queue, retries=3, retry_delay_seconds=0)
    run = api.run(deployment)
    api.move(run["id"], "PENDING", "RUNNING", "CANCELLING", "CANCELLED")
    assert api.get(f"flow_runs/{run['id']}").json()["state"]["type"] == "CANCELLED"


def test_a_resent_log_batch_is_stored_once(api: Api) -> None:
    queue = api.queue()
    run = api.run(api.deployment(queue))
    line = {"timestamp": "2030-01-01T00:00:00Z", "stream": "stdout", "line": "once"}
    batch = str(uuid.uuid4())
    for _ in range(3):
        response = api.post(f"flow_runs/{run['id']}/logs", params={"batch_id": batch}, json=[line])
        assert response.status_code == 201
    assert [entry["line"] for entry in api.get(f"flow_runs/{run['id']}/logs").json()] == ["once"]


# --------------------------------------------------------------------------- cancel


def test_cancel_semantics(api: Api) -> None:
    scheduled = _run_in(api, StateType.SCHEDULED)
    pending = _run_in(api, StateType.PENDING)
    for run in (scheduled, pending):
        cancelled = api.post(f"flow_runs/{run['id']}/cancel").json()
        assert cancelled["state"]["type"] == "CANCELLED"
        assert cancelled["state"]["message"] == "cancelled by user"
        assert cancelled["end_time"] is not None

    queue = api.queue()
    run = api.run(api.deployment(queue))
    agent = api.agent(queue)
    api.claim(queue, agent)
    api.move(run["id"], "RUNNING")
    cancelling = api.post(f"flow_runs/{run['id']}/cancel").json()
    assert cancelling["state"]["type"] == "CANCELLING"
    assert cancelling["state"]["message"] == "cancelled by user"
    assert api.get(f"agents/{agent['id']}/cancelling").json() == [run["id"]]

    again = api.post(f"flow_runs/{run['id']}/cancel")
    assert again.status_code == 200 and again.json()["state"] == cancelling["state"]
    history = api.get(f"flow_runs/{run['id']}/states").json()
    assert [s["type"] for s in history][-1:] == ["CANCELLING"]
    assert len(history) == 4

    assert api.move(run["id"], "CANCELLED")["end_time"] is not None
    assert api.get(f"agents/{agent['id']}/cancelling").json() == []
    refused = api.post(f"flow_runs/{run['id']}/cancel")
    assert refused.status_code == 409
    assert refused.json()["detail"] == transition_error(StateType.CANCELLED, StateType.CANCELLED)

    completed = _run_in(api, StateType.COMPLETED)
    assert api.post(f"flow_runs/{completed['id']}/cancel").status_code == 409


# --------------------------------------------------------------------------- logs


def test_logs_append_and_page_with_after(api: Api) -> None:
    run = api.run(api.deployment(api.queue()))
    now = datetime.now(UTC)
    lines = [
        {"timestamp": iso(now), "stream": "stdout", "line": "one"},
        {"timestamp": iso(now), "stream": "stderr", "level": "ERROR", "line": "two"},
        {"timestamp": iso(now), "stream": "agent", "line": "three"},
    ]
    posted = api.post(f"flow_runs/{run['id']}/logs", json=lines)
    assert posted.status_code == 201 and posted.json() == {"count": 3}
    other = api.run(api.deployment(api.queue()))
    api.post(f"flow_runs/{other['id']}/logs", json=lines[:1])

    got = api.get(f"flow_runs/{run['id']}/logs").json()
    assert [g["line"] for g in got] == ["one", "two", "three"]
    assert [g["stream"] for g in got] == ["stdout", "stderr", "agent"]
    assert got[1]["level"] == "ERROR" and got[0]["level"] == "INFO"
    assert all(g["flow_run_id"] == run["id"] for g in got)
    ids = [g["id"] for g in got]
    assert ids == sorted(ids)

    after_first = api.get(f"flow_runs/{run['id']}/logs", params={"after": ids[0]}).json()
    assert [g["line"] for g in after_first] == ["two", "three"]
    page = api.get(f"flow_runs/{run['id']}/logs", params={"limit": 2}).json()
    assert [g["line"] for g in page] == ["one", "two"]
    assert api.get(f"flow_runs/{run['id']}/logs", params={"after": ids[-1]}).json() == []

    api.post(f"flow_runs/{run['id']}/logs", json=[{**lines[0], "line": "four"}])
    follow = api.get(f"flow_runs/{run['id']}/logs", params={"after": ids[-1]}).json()
    assert [g["line"] for g in follow] == ["four"]

    assert api.post(f"flow_runs/{uuid.uuid4()}/logs", json=lines).status_code == 404
    assert api.get(f"flow_runs/{uuid.uuid4()}/logs").status_code == 404
    bad = api.post(f"flow_runs/{run['id']}/logs", json=[{"line": "no stream"}])
    assert bad.status_code == 422
