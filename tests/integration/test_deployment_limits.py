"""Per-deployment concurrency limits, enforced by the claim on a real server."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import (
    Server,
    cli,
    get_run,
    make_deployment,
    make_queue,
    make_run,
    running_server,
    server_fixture,
    start_agent,
    stop,
    wait_for,
)

pytestmark = pytest.mark.integration

AWAITING = "AwaitingConcurrencySlot"


# Late after a second, so that a run that would turn Late does so within the test.
server = server_fixture("limits", {"AGENT_LATE_AFTER_SECONDS": "1"})


def register(api: httpx.Client, queue: dict[str, Any]) -> dict[str, Any]:
    body = {"name": f"agent-{uuid.uuid4().hex[:10]}", "work_queue_id": queue["id"]}
    response = api.post("agents/heartbeat", json=body)
    assert response.status_code == 200, response.text
    return dict(response.json())


def claim(
    api: httpx.Client, queue: dict[str, Any], agent: dict[str, Any], **fields: Any
) -> list[str]:
    response = api.post(
        f"work_queues/{queue['id']}/claim", json={"agent_id": agent["id"], "limit": 10, **fields}
    )
    assert response.status_code == 200, response.text
    return [c["flow_run"]["id"] for c in response.json()]


def ago(seconds: float) -> str:
    return (datetime.now(UTC) - timedelta(seconds=seconds)).isoformat()


def runs_of(api: httpx.Client, deployment: dict[str, Any], count: int) -> list[dict[str, Any]]:
    return [make_run(api, deployment, expected_start_time=ago(60 - i)) for i in range(count)]


def state(api: httpx.Client, run: dict[str, Any]) -> tuple[str, str, str | None]:
    found = get_run(api, run["id"])["state"]
    return found["type"], found["name"], found["message"]


def finish(api: httpx.Client, run_id: str) -> None:
    for target in ("RUNNING", "COMPLETED"):
        response = api.post(f"flow_runs/{run_id}/set_state", json={"type": target})
        assert response.status_code == 200, response.text


def test_enqueue_holds_runs_back_in_order_without_blocking_others(api: httpx.Client) -> None:
    queue = make_queue(api)
    limited = make_deployment(api, queue, command=["true"], concurrency_limit=1)
    free = make_deployment(api, queue, command=["true"])
    runs = runs_of(api, limited, 3)
    # Due after every run of the limited deployment, in the same queue.
    other = make_run(api, free, expected_start_time=ago(1))
    agent = register(api, queue)

    assert claim(api, queue, agent) == [runs[0]["id"], other["id"]]
    reason = f"deployment {limited['name']} at its concurrency limit (1)"
    for run in runs[1:]:
        assert state(api, run) == ("SCHEDULED", AWAITING, reason)
    assert claim(api, queue, agent) == []

    # Each freed slot goes to the next run in expected-start order.
    finish(api, runs[0]["id"])
    assert claim(api, queue, agent) == [runs[1]["id"]]
    api.post(f"flow_runs/{runs[1]['id']}/cancel").raise_for_status()  # cancelled while PENDING
    assert claim(api, queue, agent) == [runs[2]["id"]]
    history = api.get(f"flow_runs/{runs[2]['id']}/states").json()
    assert [(s["type"], s["name"]) for s in history] == [
        ("SCHEDULED", "Scheduled"),
        ("SCHEDULED", AWAITING),
        ("PENDING", "Pending"),
    ]


def test_cancel_new_cancels_the_surplus_with_the_reason(api: httpx.Client) -> None:
    queue = make_queue(api)
    deployment = make_deployment(
        api, queue, command=["true"], concurrency_limit=2, collision_strategy="cancel-new"
    )
    runs = runs_of(api, deployment, 4)
    agent = register(api, queue)

    assert claim(api, queue, agent) == [runs[0]["id"], runs[1]["id"]]
    reason = f"deployment {deployment['name']} at its concurrency limit (2)"
    for run in runs[2:]:
        assert state(api, run) == ("CANCELLED", "Cancelled", reason)
    # A later run is judged when it is due: a slot is free again by then.
    finish(api, runs[0]["id"])
    later = make_run(api, deployment)
    assert claim(api, queue, agent) == [later["id"]]


def test_a_lowered_limit_binds_the_next_claim_and_a_raised_one_wakes_the_long_poll(
    api: httpx.Client,
) -> None:
    queue = make_queue(api)
    deployment = make_deployment(api, queue, command=["true"], concurrency_limit=2)
    runs = runs_of(api, deployment, 4)
    agent = register(api, queue)
    assert claim(api, queue, agent) == [runs[0]["id"], runs[1]["id"]]

    update = {k: deployment[k] for k in ("name", "work_queue_id", "command", "working_dir")}
    api.post("deployments", json=update | {"concurrency_limit": 1}).raise_for_status()
    finish(api, runs[0]["id"])
    # One still runs: at the new limit, so nothing goes (the running one is not stopped).
    assert claim(api, queue, agent) == []
    assert state(api, runs[1])[0] == "PENDING"
    finish(api, runs[1]["id"])
    assert claim(api, queue, agent) == [runs[2]["id"]]

    answered: list[list[str]] = []
    waiter = threading.Thread(
        target=lambda: answered.append(claim(api, queue, agent, wait_seconds=30)), daemon=True
    )
    waiter.start()
    api.post("deployments", json=update | {"concurrency_limit": 5}).raise_for_status()
    waiter.join(timeout=30)
    assert answered == [[runs[3]["id"]]]


def test_a_run_waiting_for_a_slot_does_not_turn_late(api: httpx.Client) -> None:
    queue = make_queue(api)
    limited = make_deployment(api, queue, command=["true"], concurrency_limit=1)
    waiting = runs_of(api, limited, 2)[1]
    agent = register(api, queue)
    claim(api, queue, agent, limit=1)
    assert state(api, waiting)[1] == AWAITING
    # A due run of the same queue that nobody claims does turn Late: the check has run.
    unclaimed = make_run(
        api, make_deployment(api, queue, command=["true"]), expected_start_time=ago(30)
    )
    wait_for(lambda: state(api, unclaimed)[1] == "Late", timeout=30, what="the control run Late")
    assert state(api, waiting)[1] == AWAITING
    preview = api.get(f"work_queues/{queue['id']}/preview").json()
    assert {r["id"]: r["state"]["name"] for r in preview}[waiting["id"]] == AWAITING


def test_bad_limits_are_refused_with_what_to_do(server: Server, api: httpx.Client) -> None:
    queue = make_queue(api)
    body = {"name": "bad", "work_queue_id": queue["id"], "command": ["true"]}
    for fields in (
        {"concurrency_limit": 0},
        {"concurrency_limit": -1},
        {"collision_strategy": "drop"},
    ):
        response = api.post("deployments", json=body | fields)
        assert response.status_code == 422, response.text

    base = ["deployment", "create", "--name", "d", "--queue", queue["name"], "--command", "true"]
    for flags, says in (
        (["--concurrency-limit", "0"], "--concurrency-limit: must be 1 or more (got 0)"),
        (["--concurrency-limit", "-3"], "--concurrency-limit: must be 1 or more (got -3)"),
        (
            ["--concurrency-limit", "1", "--collision", "drop"],
            "--collision: Input should be 'enqueue' or 'cancel-new'",
        ),
    ):
        result = cli(server, *base, *flags, check=False)
        assert result.returncode == 1
        assert says in result.stderr, result.stderr
    assert api.get("deployments/name/d").status_code == 404  # nothing half-made


def test_cli_sets_and_updates_the_limit(server: Server, api: httpx.Client, tmp_path: Any) -> None:
    queue = make_queue(api)
    name = f"etl-{uuid.uuid4().hex[:8]}"
    cli(
        server, "deployment", "create", "--name", name, "--queue", queue["name"],
        "--command", "true", "--concurrency-limit", "3", "--collision", "cancel-new",
    )  # fmt: skip
    found = api.get(f"deployments/name/{name}").json()
    assert (found["concurrency_limit"], found["collision_strategy"]) == (3, "cancel-new")

    cli(server, "deployment", "update", name, "--concurrency-limit", "1")
    found = api.get(f"deployments/name/{name}").json()
    assert (found["concurrency_limit"], found["collision_strategy"]) == (1, "cancel-new")
    assert found["command"] == ["true"]  # the rest unchanged
    cli(server, "deployment", "update", name, "--no-concurrency-limit")
    assert api.get(f"deployments/name/{name}").json()["concurrency_limit"] is None
    result = cli(server, "deployment", "update", name, "--concurrency-limit", "0", check=False)
    assert result.returncode == 1
    assert "--concurrency-limit: must be 1 or more (got 0)" in result.stderr

    # In a deployment file too.
    spec = tmp_path / "deploy.yaml"
    spec.write_text(
        f"name: {name}-file\nqueue: {queue['name']}\ncommand: 'true'\n"
        "concurrency_limit: 2\ncollision_strategy: enqueue\n"
    )
    cli(server, "deployment", "create", "--file", str(spec))
    found = api.get(f"deployments/name/{name}-file").json()
    assert (found["concurrency_limit"], found["collision_strategy"]) == (2, "enqueue")
    listed = json.loads(cli(server, "deployment", "ls", "--json").stdout)
    assert {d["name"]: d["concurrency_limit"] for d in listed}[name] is None


def test_real_agent_runs_other_deployments_past_a_full_one(
    server: Server, api: httpx.Client, tmp_path: Path
) -> None:
    queue = make_queue(api)
    hold = (
        'touch "$OUT/a-$SEQ.started"; '
        'while [ ! -e "$OUT/release" ]; do sleep 0.05; done; touch "$OUT/a-$SEQ.done"'
    )
    limited = make_deployment(api, queue, command=["sh", "-c", hold], concurrency_limit=1)
    other = make_deployment(api, queue, command=["sh", "-c", 'touch "$OUT/b.done"'])
    env = {"OUT": str(tmp_path)}
    held = [
        make_run(api, limited, expected_start_time=ago(30 - i), env=env | {"SEQ": str(i)})
        for i in range(3)
    ]
    behind = make_run(api, other, expected_start_time=ago(1), env=env)
    agent = start_agent(
        server, queue["id"], "--limit", "4", "--name", f"hol-{uuid.uuid4().hex[:8]}"
    )
    try:
        # The other deployment's run, due after all three, completes while the first holds
        # the only slot and the two others wait.
        wait_for(lambda: (tmp_path / "b.done").exists(), timeout=30, what="the other run")
        wait_for(lambda: state(api, behind)[0] == "COMPLETED", timeout=10, what="its state")
        assert (tmp_path / "a-0.started").exists()
        assert not (tmp_path / "a-1.started").exists() and not (tmp_path / "a-2.started").exists()
        assert [state(api, run)[1] for run in held[1:]] == [AWAITING, AWAITING]

        (tmp_path / "release").touch()
        for run in held:
            wait_for(lambda run=run: state(api, run)[0] == "COMPLETED", timeout=30, what="A")
        starts = [get_run(api, run["id"])["start_time"] for run in held]
        assert starts == sorted(starts)  # one after another, in expected-start order
        assert sorted(p.name for p in tmp_path.glob("a-*.done")) == [
            f"a-{i}.done" for i in range(3)
        ]
    finally:
        assert stop(agent) == 0


def test_a_slot_frees_when_its_holders_lease_expires(tmp_path: Path) -> None:
    with (
        running_server(tmp_path / "server", extra_env={"AGENT_LEASE_SECONDS": "2"}) as server,
        server.client() as api,
    ):
        queue = make_queue(api)
        deployment = make_deployment(api, queue, command=["true"], concurrency_limit=1)
        first, second = runs_of(api, deployment, 2)
        gone = register(api, queue)  # heartbeats once, claims, and is never heard of again
        assert claim(api, queue, gone) == [first["id"]]
        assert state(api, second)[1] == AWAITING

        # Another agent's held claim gets the waiting run once the dead one's lease ends.
        survivor = register(api, queue)
        assert claim(api, queue, survivor, wait_seconds=30) == [second["id"]]
        crashed = state(api, first)
        assert crashed[0] == "CRASHED"
        assert f"agent {gone['name']} stopped heartbeating" in (crashed[2] or "")
