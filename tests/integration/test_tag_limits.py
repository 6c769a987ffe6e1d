"""Tag concurrency limits across deployments and queues, and their CLI, on a real server."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import UTC, datetime, timedelta
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
    server_fixture,
)

pytestmark = pytest.mark.integration


server = server_fixture("tags")


def tag() -> str:
    return f"db-{uuid.uuid4().hex[:8]}"


def limit(api: httpx.Client, tag: str, n: int) -> dict[str, Any]:
    response = api.post("concurrency_limits", json={"tag": tag, "limit": n})
    assert response.status_code == 201, response.text
    return dict(response.json())


def register(api: httpx.Client, *queues: dict[str, Any]) -> dict[str, Any]:
    body = {
        "name": f"agent-{uuid.uuid4().hex[:10]}",
        "work_queue_id": queues[0]["id"],
        "work_queue_ids": [q["id"] for q in queues],
    }
    response = api.post("agents/heartbeat", json=body)
    assert response.status_code == 200, response.text
    return dict(response.json())


def claim(
    api: httpx.Client, agent: dict[str, Any], *queues: dict[str, Any], **fields: Any
) -> list[str]:
    body = {"agent_id": agent["id"], "work_queue_ids": [q["id"] for q in queues], "limit": 20}
    response = api.post("work_queues/claim", json=body | fields)
    assert response.status_code == 200, response.text
    return [c["flow_run"]["id"] for c in response.json()]


def ago(seconds: float) -> str:
    return (datetime.now(UTC) - timedelta(seconds=seconds)).isoformat()


def finish(api: httpx.Client, run_id: str) -> None:
    for target in ("RUNNING", "COMPLETED"):
        api.post(f"flow_runs/{run_id}/set_state", json={"type": target}).raise_for_status()


def test_a_tag_limit_holds_across_deployments_and_queues(api: httpx.Client) -> None:
    db = tag()
    found = limit(api, db, 2)
    first, second = make_queue(api), make_queue(api)
    deployments = [
        make_deployment(api, first, command=["true"], tags=[db]),
        make_deployment(api, first, command=["true"], tags=[db]),
        make_deployment(api, second, command=["true"], tags=[db]),
    ]
    runs = [
        make_run(api, deployments[i % 3], expected_start_time=ago(60 - i))["id"] for i in range(6)
    ]
    untagged = make_run(api, make_deployment(api, second, command=["true"]))["id"]
    agent = register(api, first, second)

    taken = claim(api, agent, first, second)
    # Two of the tag's runs (the first queue's soonest), and the untagged one is not held up.
    assert taken == [runs[0], runs[1], untagged]
    for run_id in runs[2:]:
        run = get_run(api, run_id)
        assert (run["state"]["type"], run["state"]["name"]) == (
            "SCHEDULED",
            "AwaitingConcurrencySlot",
        )
        assert run["state"]["message"] == f"tag {db} at its concurrency limit (2)"
    slots = api.get(f"concurrency_limits/{found['id']}").json()["active_run_ids"]
    assert sorted(slots) == sorted(runs[:2])

    # A slot freed in the first queue lets a run of the second go: a held claim there wakes.
    answered: list[list[str]] = []
    waiter = threading.Thread(
        target=lambda: answered.append(claim(api, agent, second, wait_seconds=30)), daemon=True
    )
    waiter.start()
    finish(api, runs[0])
    waiter.join(timeout=30)
    assert answered == [[runs[2]]]  # deployments[2] is the second queue's


def test_a_run_with_several_limited_tags_needs_a_slot_of_each(api: httpx.Client) -> None:
    db, gpu = tag(), tag()
    limit(api, db, 1)
    limit(api, gpu, 5)
    queue = make_queue(api)
    gpu_only = make_deployment(api, queue, command=["true"], tags=[gpu])
    both = make_deployment(api, queue, command=["true"], tags=[db, gpu])
    first = make_run(api, both, expected_start_time=ago(10))["id"]
    second = make_run(api, both, expected_start_time=ago(9))["id"]
    other = make_run(api, gpu_only, expected_start_time=ago(8))["id"]
    agent = register(api, queue)

    assert claim(api, agent, queue) == [first, other]
    assert get_run(api, second)["state"]["message"] == f"tag {db} at its concurrency limit (1)"


def test_lowering_raising_and_deleting_a_tag_limit(api: httpx.Client) -> None:
    db = tag()
    found = limit(api, db, 2)
    queue = make_queue(api)
    deployment = make_deployment(api, queue, command=["true"], tags=[db])
    runs = [make_run(api, deployment, expected_start_time=ago(60 - i))["id"] for i in range(5)]
    agent = register(api, queue)
    assert claim(api, agent, queue) == runs[:2]

    api.patch(f"concurrency_limits/{found['id']}", json={"limit": 1}).raise_for_status()
    finish(api, runs[0])
    assert claim(api, agent, queue) == []  # one still holds a slot of the new limit of 1
    assert get_run(api, runs[1])["state"]["type"] == "PENDING"  # not stopped
    api.patch(f"concurrency_limits/{found['id']}", json={"limit": 2}).raise_for_status()
    assert claim(api, agent, queue) == [runs[2]]
    assert api.delete(f"concurrency_limits/{found['id']}").status_code == 204
    assert claim(api, agent, queue) == runs[3:]


def test_bad_tag_limits_are_refused_with_what_to_do(server: Server, api: httpx.Client) -> None:
    db = tag()
    for body in (
        {"tag": db, "limit": 0},
        {"tag": db, "limit": -1},
        {"limit": 2},
        {"tag": "", "limit": 2},
    ):
        assert api.post("concurrency_limits", json=body).status_code == 422, body
    limit(api, db, 1)
    response = api.post("concurrency_limits", json={"tag": db, "limit": 3, "name": "other"})
    assert response.status_code == 409
    assert f"already has tag {db!r}" in response.json()["detail"]

    for args, says in (
        (
            ["create", "x", "--limit", "2"],
            "error: missing --tag: the tag whose runs this limit counts",
        ),
        (["create", "x", "--tag", " ", "--limit", "2"], "error: missing --tag"),
        (["create", "x", "--tag", "t"], "error: missing --limit"),
        (["create", "x", "--tag", "t", "--limit", "0"], "error: --limit must be 1 or more (got 0)"),
        (
            ["create", "x", "--tag", "t", "--limit", "-2"],
            "error: --limit must be 1 or more (got -2)",
        ),
        (["update", db, "--limit", "0"], "error: --limit must be 1 or more (got 0)"),
        (["inspect", "no-such-limit"], "error: no concurrency limit 'no-such-limit'"),
    ):
        result = cli(server, "concurrency-limit", *args, check=False)
        assert result.returncode == 1, args
        assert says in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
    names = [found["name"] for found in api.get("concurrency_limits").json()]
    assert "x" not in names


def test_the_cli_round_trip(server: Server, api: httpx.Client) -> None:
    db = tag()
    queue = make_queue(api)
    deployment = make_deployment(api, queue, command=["true"], tags=[db])
    created = cli(server, "concurrency-limit", "create", db, "--tag", db, "--limit", "2")
    limit_id = created.stdout.strip()
    assert "no deployment carries" not in created.stderr
    lonely = cli(
        server, "concurrency-limit", "create", f"{db}-x", "--tag", f"{db}-x", "--limit", "1"
    )
    assert f"no deployment carries the tag '{db}-x' yet" in lonely.stderr

    run = make_run(api, deployment)["id"]
    agent = register(api, queue)
    assert claim(api, agent, queue) == [run]
    inspected = json.loads(cli(server, "concurrency-limit", "inspect", db).stdout)
    assert (inspected["id"], inspected["limit"], inspected["active_run_ids"]) == (
        limit_id,
        2,
        [run],
    )
    listed = cli(server, "concurrency-limit", "ls", env={"COLUMNS": "300"}).stdout
    assert "1/2" in next(
        line for line in listed.splitlines() if db + " " in line or line.startswith(db)
    )
    cli(server, "concurrency-limit", "update", db, "--limit", "4")
    assert api.get(f"concurrency_limits/{limit_id}").json()["limit"] == 4
    cli(server, "concurrency-limit", "delete", db, "--yes")
    assert api.get(f"concurrency_limits/{limit_id}").status_code == 404
