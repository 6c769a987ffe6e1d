"""Batched reports (POST /api/flow_runs/reports) over real HTTP, and the agent's client of them.

The batch must judge every report exactly as the single-run routes do (transition rules,
ownership, attempt fencing, 404s), item by item, so that one refused report neither fails nor
undoes the others.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import TYPE_CHECKING, Any

import pytest

from agent.backends.http import HttpClient
from agent.backends.native import NativeBackend
from agent.errors import Conflict, NotFound
from agent.models import StateProposal, StateType

if TYPE_CHECKING:
    from tests.support import Api, Server

pytestmark = pytest.mark.integration


def report(run_id: str, state: str | None = None, **fields: Any) -> dict[str, Any]:
    if state is None:
        return {"run_id": run_id, **fields}
    return {"run_id": run_id, "state": {"type": state, **fields}}


def history(api: Api, run_id: str) -> list[str]:
    return [s["type"] for s in api.get(f"flow_runs/{run_id}/states").json()]


def test_each_report_is_judged_on_its_own_and_answered_in_order(api: Api) -> None:
    queue = api.queue()
    deployment = api.deployment(queue, retries=1, retry_delay_seconds=0)
    fine, impossible, stale = (api.run(deployment) for _ in range(3))
    api.move(fine["id"], "PENDING")
    api.move(stale["id"], "PENDING", "RUNNING", "CRASHED", "PENDING")  # now on attempt 2
    missing = str(uuid.uuid4())

    response = api.post(
        "flow_runs/reports",
        json=[
            report(fine["id"], "RUNNING", attempt=1),
            report(impossible["id"], "COMPLETED"),
            report(stale["id"], "RUNNING", attempt=1),
            report(missing, "RUNNING"),
            report(fine["id"], runner_info={"pid": 42}),
            report(fine["id"], "COMPLETED", attempt=1, runner_info={"exit_code": 0}),
        ],
    )

    assert response.status_code == 200, response.text
    results = response.json()
    assert [r["status"] for r in results] == [200, 409, 409, 404, 200, 200]
    assert results[0]["flow_run"]["state"]["type"] == "RUNNING"
    assert "SCHEDULED" in results[1]["detail"] and results[1]["flow_run"] is None
    assert "stale report: attempt 1" in results[2]["detail"]
    assert missing in results[3]["detail"]
    assert results[4]["flow_run"]["runner_info"] == {"pid": 42}
    done = results[5]["flow_run"]
    assert done["state"]["type"] == "COMPLETED"
    assert done["runner_info"] == {"pid": 42, "exit_code": 0}
    # The refused reports changed nothing.
    assert history(api, impossible["id"]) == ["SCHEDULED"]
    assert api.get_run(stale["id"])["state"]["type"] == "PENDING"
    assert history(api, fine["id"]) == ["SCHEDULED", "PENDING", "RUNNING", "COMPLETED"]


def test_a_repeated_report_is_refused_like_the_single_route_refuses_it(api: Api) -> None:
    queue = api.queue()
    deployment = api.deployment(queue)
    run = api.run(deployment)
    api.move(run["id"], "PENDING", "RUNNING")
    single = api.set_state(run["id"], "RUNNING")

    batch = api.post(
        "flow_runs/reports",
        json=[report(run["id"], "RUNNING"), report(run["id"], "COMPLETED")],
    )

    assert single.status_code == 409
    assert [r["status"] for r in batch.json()] == [409, 200]
    assert batch.json()[0]["detail"] == single.json()["detail"]
    assert history(api, run["id"]) == ["SCHEDULED", "PENDING", "RUNNING", "COMPLETED"]


def test_only_the_claiming_agent_may_report_in_a_batch(api: Api) -> None:
    queue = api.queue()
    deployment = api.deployment(queue)
    owner, other = api.agent(queue), api.agent(queue)
    run = api.run(deployment)
    [claimed] = api.claim(queue, owner)

    response = api.post(
        "flow_runs/reports",
        json=[
            report(claimed["flow_run"]["id"], "RUNNING", agent_id=other["id"]),
            report(run["id"], "RUNNING", agent_id=owner["id"]),
        ],
    )

    assert [r["status"] for r in response.json()] == [409, 200]
    assert f"claimed by agent {owner['id']}" in response.json()[0]["detail"]


@pytest.mark.parametrize(
    "body",
    [
        [{"run_id": str(uuid.uuid4())}],
        [{"run_id": str(uuid.uuid4()), "state": {"type": "RUNNING"}, "runner_info": {}}],
        [{"run_id": str(uuid.uuid4()), "runner_info": {}}] * 1001,
    ],
    ids=["neither", "both", "too-many"],
)
def test_malformed_batches_are_refused_whole(api: Api, body: list[dict[str, Any]]) -> None:
    assert api.post("flow_runs/reports", json=body).status_code == 422


def test_a_final_state_in_a_batch_frees_the_slot_for_a_waiting_claimer(api: Api) -> None:
    queue = api.queue(concurrency_limit=1)
    deployment = api.deployment(queue)
    agent = api.agent(queue)
    first = api.run(deployment)
    api.claim(queue, agent)
    api.move(first["id"], "RUNNING")
    second = api.run(deployment)
    answered: list[list[Any]] = []
    waiter = threading.Thread(
        target=lambda: answered.append(api.claim(queue, agent, wait_seconds=30)), daemon=True
    )
    waiter.start()

    api.post("flow_runs/reports", json=[report(first["id"], "COMPLETED")])
    waiter.join(35)

    assert [c["flow_run"]["id"] for c in answered[0]] == [second["id"]]


def test_the_agent_client_batches_concurrent_reports_and_answers_each_caller(
    server: Server, api: Api
) -> None:
    queue = api.queue()
    deployment = api.deployment(queue)
    runs = [api.run(deployment)["id"] for _ in range(40)]
    for run_id in runs:
        api.move(run_id, "PENDING")
    refused = runs[7]
    api.move(refused, "CANCELLED")
    missing = uuid.uuid4()

    async def scenario() -> tuple[list[Any], int]:
        backend = NativeBackend(HttpClient(server.url))
        try:
            running = StateProposal(type=StateType.RUNNING, attempt=1)
            outcomes = await asyncio.gather(
                *(backend.set_state(uuid.UUID(r), running) for r in runs),
                backend.set_state(missing, running),
                *(backend.update_runner_info(uuid.UUID(r), {"pid": i}) for i, r in enumerate(runs)),
                return_exceptions=True,
            )
            return outcomes, backend.reports.batches_sent
        finally:
            await backend.aclose()

    outcomes, batches = asyncio.run(scenario())

    assert batches >= 1  # 81 concurrent calls cannot all have gone out alone
    states, lost, infos = outcomes[:40], outcomes[40], outcomes[41:]
    assert isinstance(states[7], Conflict)
    assert all(s.state.type is StateType.RUNNING for i, s in enumerate(states) if i != 7)
    assert isinstance(lost, NotFound)
    assert all(info is None for info in infos)
    for i, run_id in enumerate(runs):
        run = api.get_run(run_id)
        assert run["runner_info"] == {"pid": i}
        assert run["state"]["type"] == ("CANCELLED" if run_id == refused else "RUNNING")
