"""One agent, several work queues in strict priority order: the API and real agents."""

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
    server_fixture,
    start_agent,
    stop,
    wait_for,
    wait_state,
)

pytestmark = pytest.mark.integration


server = server_fixture("queues")


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
    body = {"agent_id": agent["id"], "work_queue_ids": [q["id"] for q in queues], **fields}
    response = api.post("work_queues/claim", json=body)
    assert response.status_code == 200, response.text
    return [c["flow_run"]["id"] for c in response.json()]


def ago(seconds: float) -> str:
    return (datetime.now(UTC) - timedelta(seconds=seconds)).isoformat()


# --------------------------------------------------------------------------- the claim API


def test_one_claim_serves_queues_in_strict_priority(api: httpx.Client) -> None:
    high, low = make_queue(api), make_queue(api)
    low_runs = [
        make_run(api, make_deployment(api, low, command=["true"]), expected_start_time=ago(60 - i))
        for i in range(5)
    ]
    high_run = make_run(
        api, make_deployment(api, high, command=["true"]), expected_start_time=ago(1)
    )
    agent = register(api, high, low)

    # The later run of the first queue goes before every earlier run of the second.
    assert claim(api, agent, high, low) == [high_run["id"]]
    # Then the second queue's, soonest first, up to the limit asked.
    assert claim(api, agent, high, low, limit=3) == [r["id"] for r in low_runs[:3]]
    assert claim(api, agent, high, low, limit=10) == [r["id"] for r in low_runs[3:]]
    assert claim(api, agent, high, low, limit=10) == []
    for run in [high_run, *low_runs]:
        assert get_run(api, run["id"])["agent_id"] == agent["id"]


def test_each_queue_keeps_its_limit_tags_and_pause(api: httpx.Client) -> None:
    limited = make_queue(api, concurrency_limit=1)
    tagged = make_queue(api, tags=["gpu"])
    paused = make_queue(api, paused=True)
    limited_runs = [
        make_run(api, make_deployment(api, limited, command=["true"])) for _ in range(2)
    ]
    untagged = make_run(api, make_deployment(api, tagged, command=["true"]))
    gpu = make_run(api, make_deployment(api, tagged, command=["true"], tags=["gpu"]))
    held = make_run(api, make_deployment(api, paused, command=["true"]))
    agent = register(api, paused, limited, tagged)

    taken = claim(api, agent, paused, limited, tagged, limit=10)

    # One of the limited queue's (its limit), the tagged queue's run with its tag, nothing
    # from the paused queue, although it comes first.
    assert taken == [limited_runs[0]["id"], gpu["id"]]
    for run in (limited_runs[1], untagged, held):
        assert get_run(api, run["id"])["state"]["type"] == "SCHEDULED"
    api.patch(f"work_queues/{paused['id']}", json={"paused": False}).raise_for_status()
    assert claim(api, agent, paused, limited, tagged, limit=10) == [held["id"]]


def test_a_deleted_queue_is_named_and_the_heartbeat_goes_on(api: httpx.Client) -> None:
    gone, kept = make_queue(api), make_queue(api)
    agent = register(api, gone, kept)
    assert api.delete(f"work_queues/{gone['id']}").status_code == 204

    response = api.post(
        "work_queues/claim",
        json={"agent_id": agent["id"], "work_queue_ids": [gone["id"], kept["id"]]},
    )
    assert response.status_code == 404
    assert gone["id"] in response.json()["detail"]
    assert kept["id"] not in response.json()["detail"]
    # The agent keeps its id, and its heartbeat (naming the gone queue first) is accepted.
    again = register_named(api, agent["name"], gone, kept)
    assert again["id"] == agent["id"]
    assert again["work_queue_id"] == kept["id"]
    assert again["work_queue_ids"] == [kept["id"]]
    # All gone: refused, naming them.
    api.delete(f"work_queues/{kept['id']}").raise_for_status()
    response = api.post(
        "agents/heartbeat",
        json={
            "name": agent["name"],
            "work_queue_id": gone["id"],
            "work_queue_ids": [gone["id"], kept["id"]],
        },
    )
    assert response.status_code == 404, response.text


def register_named(api: httpx.Client, name: str, *queues: dict[str, Any]) -> dict[str, Any]:
    body = {
        "name": name,
        "work_queue_id": queues[0]["id"],
        "work_queue_ids": [q["id"] for q in queues],
    }
    response = api.post("agents/heartbeat", json=body)
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_claim_request_refuses_an_empty_or_repeated_queue_list(api: httpx.Client) -> None:
    queue = make_queue(api)
    agent = register(api, queue)
    for ids, says in (([], "work_queue_ids is empty"), ([queue["id"]] * 2, "names a queue twice")):
        response = api.post(
            "work_queues/claim", json={"agent_id": agent["id"], "work_queue_ids": ids}
        )
        assert response.status_code == 422
        assert says in response.text


def test_the_long_poll_wakes_for_a_run_in_any_queue(api: httpx.Client) -> None:
    first, second = make_queue(api), make_queue(api)
    deployment = make_deployment(api, second, command=["true"])
    agent = register(api, first, second)
    answered: list[list[str]] = []
    waiter = threading.Thread(
        target=lambda: answered.append(claim(api, agent, first, second, wait_seconds=30)),
        daemon=True,
    )
    waiter.start()
    # Held (nothing is due in either queue) or not yet arrived: either way its answer is the
    # run made now in the second queue. How soon it answers is benchmarked, not tested.
    run = make_run(api, deployment)
    waiter.join(timeout=30)
    assert answered == [[run["id"]]]


def test_the_backlog_gauge_counts_due_runs_per_queue(server: Server, api: httpx.Client) -> None:
    queue = make_queue(api)
    deployment = make_deployment(api, queue, command=["true"])
    for _ in range(3):
        make_run(api, deployment)
    make_run(
        api, deployment, expected_start_time=(datetime.now(UTC) + timedelta(hours=1)).isoformat()
    )
    text = httpx.get(server.url.removesuffix("/api") + "/metrics").text
    line = f'flowagent_server_queue_backlog{{queue="{queue["name"]}",queue_id="{queue["id"]}"}} 3.0'
    assert line in text.splitlines()


# --------------------------------------------------------------------------- real agents


def marker_deployment(
    api: httpx.Client, queue: dict[str, Any], out: Path, word: str
) -> dict[str, Any]:
    return make_deployment(api, queue, command=["sh", "-c", f"echo {word} >> {out}"])


def agents_json(server: Server) -> list[dict[str, Any]]:
    return list(json.loads(cli(server, "agents", "ls", "--json").stdout))


def test_agent_takes_the_first_queue_first(
    server: Server, api: httpx.Client, tmp_path: Path
) -> None:
    high, low = make_queue(api), make_queue(api)
    out = tmp_path / "order"
    low_deployment = marker_deployment(api, low, out, "low")
    runs = [make_run(api, low_deployment, expected_start_time=ago(30 - i)) for i in range(5)]
    runs.append(
        make_run(api, marker_deployment(api, high, out, "high"), expected_start_time=ago(1))
    )
    name = f"multi-{uuid.uuid4().hex[:8]}"
    # By name, as a user would type them.
    agent = start_agent(server, high["name"], low["name"], "--limit", "1", "--name", name)
    try:
        for run in runs:
            assert wait_state(api, run["id"])["state"]["type"] == "COMPLETED"
        assert out.read_text().split() == ["high"] + ["low"] * 5
        [record] = [a for a in agents_json(server) if a["name"] == name]
        assert record["work_queue_ids"] == [high["id"], low["id"]]
        listed = cli(server, "agents", "ls", env={"COLUMNS": "400"}).stdout
        assert f"{high['name']}, {low['name']}" in listed
    finally:
        assert stop(agent) == 0


def test_pause_and_delete_one_queue_while_the_agent_runs(
    server: Server, api: httpx.Client, tmp_path: Path
) -> None:
    first, second = make_queue(api), make_queue(api)
    out = tmp_path / "done"
    first_deployment = marker_deployment(api, first, out, "first")
    second_deployment = marker_deployment(api, second, out, "second")
    log_path = tmp_path / "agent.log"
    agent = start_agent(
        server, first["id"], second["id"], "--name", f"pd-{uuid.uuid4().hex[:8]}", log_path=log_path
    )
    try:
        assert (
            wait_state(api, make_run(api, first_deployment)["id"])["state"]["type"] == "COMPLETED"
        )

        # Paused: its run waits while the other queue's runs go.
        api.patch(f"work_queues/{first['id']}", json={"paused": True}).raise_for_status()
        waiting = make_run(api, first_deployment)
        assert (
            wait_state(api, make_run(api, second_deployment)["id"])["state"]["type"] == "COMPLETED"
        )
        assert get_run(api, waiting["id"])["state"]["type"] == "SCHEDULED"
        api.patch(f"work_queues/{first['id']}", json={"paused": False}).raise_for_status()
        assert wait_state(api, waiting["id"])["state"]["type"] == "COMPLETED"

        # Deleted: said once, and the agent goes on with the other queue.
        api.delete(f"deployments/{first_deployment['id']}").raise_for_status()
        api.delete(f"work_queues/{first['id']}").raise_for_status()
        wait_for(lambda: "queue_deleted" in log_path.read_text(), timeout=20, what="queue_deleted")
        after = make_run(api, second_deployment)
        assert wait_state(api, after["id"])["state"]["type"] == "COMPLETED"
        assert agent.poll() is None
        assert out.read_text().split() == ["first", "second", "first", "second"]
        deleted = [
            json.loads(line)
            for line in log_path.read_text().splitlines()
            if "queue_deleted" in line
        ]
        assert len(deleted) == 1 and deleted[0]["queue_id"] == first["id"]

        # Every queue gone: the agent stops, saying why.
        api.delete(f"deployments/{second_deployment['id']}").raise_for_status()
        api.delete(f"work_queues/{second['id']}").raise_for_status()
        agent.wait(timeout=30)
        assert agent.returncode == 1
        assert "every work queue of this agent is gone" in log_path.read_text()
    finally:
        stop(agent)


def test_run_once_takes_what_is_due_in_every_queue_and_exits(
    server: Server, api: httpx.Client, tmp_path: Path
) -> None:
    first, second, paused = make_queue(api), make_queue(api), make_queue(api, paused=True)
    out = tmp_path / "done"
    runs = [
        make_run(api, marker_deployment(api, second, out, "second")),
        make_run(api, marker_deployment(api, first, out, "first")),
    ]
    held = make_run(api, marker_deployment(api, paused, out, "paused"))
    agent = start_agent(
        server, first["id"], second["id"], paused["id"], "--run-once", "--limit", "1",
        "--name", f"once-{uuid.uuid4().hex[:8]}",
    )  # fmt: skip
    assert agent.wait(timeout=60) == 0
    assert [get_run(api, r["id"])["state"]["type"] for r in runs] == ["COMPLETED"] * 2
    assert get_run(api, held["id"])["state"]["type"] == "SCHEDULED"
    assert out.read_text().split() == ["first", "second"]
