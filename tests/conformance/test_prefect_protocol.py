"""The Prefect backend's corner cases, against real Prefect 3 and 2 servers, in-process.

The scenarios (test_scenarios.py) show the agent's behaviour end to end; these drive
:class:`agent.backends.prefect.PrefectBackend` directly to set up the races and lost answers
that end-to-end runs hit only by chance, and pin down the server behaviour each one relies on.
Another agent's (or the engine's) moves are made by hand over the REST API.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from agent.backends import prefect_backend
from agent.backends.prefect import PrefectBackend
from agent.backends.prefect_claims import Held
from agent.config import Settings
from agent.errors import Conflict
from agent.models import Heartbeat, StateProposal, StateType
from tests.conformance.harness import PrefectHarness, Queue, unique

pytestmark = pytest.mark.integration
T = TypeVar("T")
AGENT = "protocol-agent"


@pytest.fixture(params=["prefect3", "prefect2"])
def prefect(request: pytest.FixtureRequest) -> PrefectHarness:
    harness: PrefectHarness = request.getfixturevalue(f"{request.param}_harness")
    return harness


@pytest.fixture
def queue(prefect: PrefectHarness) -> Queue:
    return prefect.queue()


@pytest.fixture
def run_with(
    prefect: PrefectHarness, queue: Queue, tmp_path: Path
) -> Iterator[Callable[[Callable[[PrefectBackend], Awaitable[T]]], T]]:
    """Run ``body(backend)`` with a backend that resolved the queue and sent a heartbeat."""

    def run(body: Callable[[PrefectBackend], Awaitable[T]]) -> T:
        async def main() -> T:
            # Its own home: claimed runs get working directories under it.
            settings = Settings(api_url=prefect.url, startup_timeout_seconds=15, home=tmp_path)
            backend = prefect_backend(settings, runner_options={"python": prefect.python})
            try:
                await backend.get_queue(uuid.UUID(queue.id))
                await backend.heartbeat(
                    Heartbeat(
                        name=AGENT,
                        work_queue_id=uuid.UUID(queue.id),
                        heartbeat_interval_seconds=0.5,
                    )
                )
                return await body(backend)
            finally:
                await backend.aclose()

        return asyncio.run(main())

    yield run


def propose(prefect: PrefectHarness, run_id: str, kind: str, **state: Any) -> dict[str, Any]:
    body = {"state": {"type": kind, **state}, "force": False}
    result: dict[str, Any] = prefect.ok("POST", f"flow_runs/{run_id}/set_state", json=body)
    return result


def new_run(prefect: PrefectHarness, queue: Queue) -> str:
    return prefect.run(prefect.deployment(queue, "flows.py:add", a=1, b=1))


def test_a_claim_landing_after_the_run_finished_elsewhere_is_undone(
    prefect: PrefectHarness, queue: Queue, run_with: Any
) -> None:
    """Prefect accepts PENDING on a COMPLETED run without a persisted result: a claim from a
    stale scheduled list must notice and put the run back as it was."""
    run_id = new_run(prefect, queue)

    async def body(backend: PrefectBackend) -> bool:
        fresh = await backend.claims.read(uuid.UUID(run_id))
        assert fresh.state_type == "SCHEDULED"
        held = backend.claims.held[fresh.id] = Held(uuid.uuid4(), fresh.progress)
        # Meanwhile another agent claims it, and its engine runs it to the end.
        for kind in ("PENDING", "RUNNING", "COMPLETED"):
            assert propose(prefect, run_id, kind)["status"] == "ACCEPT"
        # Our proposal lands late; the server takes it (the trap).
        late = propose(
            prefect, run_id, "PENDING", state_details={"transition_id": str(held.transition_id)}
        )
        assert late["status"] == "ACCEPT", late
        return await backend.claims.undisturbed(fresh.id, held)

    assert run_with(body) is False
    assert prefect.state(run_id)["type"] == "COMPLETED"
    assert prefect.history(run_id)[-3:] == ["COMPLETED", "PENDING", "COMPLETED"]


def test_a_claim_whose_answer_was_lost_is_picked_up_by_the_next_claim(
    prefect: PrefectHarness, queue: Queue, run_with: Any
) -> None:
    run_id = new_run(prefect, queue)

    async def body(backend: PrefectBackend) -> list[str]:
        fresh = await backend.claims.read(uuid.UUID(run_id))
        held = backend.claims.held[fresh.id] = Held(uuid.uuid4(), fresh.progress)
        details = {"transition_id": str(held.transition_id)}
        assert propose(prefect, run_id, "PENDING", state_details=details)["status"] == "ACCEPT"
        # Sent again with the same transition id: REJECTed, with our own state.
        again = propose(prefect, run_id, "PENDING", state_details=details)
        assert again["status"] == "REJECT", again
        assert again["state"]["state_details"]["transition_id"] == str(held.transition_id)
        claimed = await backend.claim([uuid.UUID(queue.id)], uuid.uuid4(), [], 5, 0)
        return [str(c.flow_run.id) for c in claimed]

    assert run_with(body) == [run_id]
    assert prefect.claims(run_id) == 1


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_claimed_runs_are_this_agent_s_from_an_earlier_life_only(
    prefect: PrefectHarness, queue: Queue, run_with: Any
) -> None:
    import socket

    host = socket.gethostname()
    earlier = new_run(prefect, queue)
    live_twin = new_run(prefect, queue)
    other_agent = new_run(prefect, queue)
    for run_id, name, pid in (
        (earlier, AGENT, _dead_pid()),
        (live_twin, AGENT, os.getppid()),  # a live process with our name: a second agent
        (other_agent, "someone-else", _dead_pid()),
    ):
        message = f"claimed by flowagent agent {name} on {host} (pid {pid})"
        assert propose(prefect, run_id, "PENDING", message=message)["status"] == "ACCEPT"

    async def body(backend: PrefectBackend) -> set[str]:
        return {str(run.id) for run in await backend.claimed_runs(uuid.uuid4())}

    found = run_with(body)
    assert earlier in found
    assert live_twin not in found
    assert other_agent not in found


def test_a_run_cancelled_while_pending_is_not_started_and_ends_cancelled(
    prefect: PrefectHarness, queue: Queue, run_with: Any
) -> None:
    run_id = new_run(prefect, queue)

    async def body(backend: PrefectBackend) -> None:
        claimed = await backend.claim([uuid.UUID(queue.id)], uuid.uuid4(), [], 1, 5)
        assert [str(c.flow_run.id) for c in claimed] == [run_id]
        # `prefect flow-run cancel` on a PENDING run makes it CANCELLING.
        assert propose(prefect, run_id, "CANCELLING")["status"] == "ACCEPT"
        with pytest.raises(Conflict):
            await backend.set_state(claimed[0].flow_run.id, StateProposal(type=StateType.RUNNING))

    run_with(body)
    assert prefect.state(run_id)["type"] == "CANCELLED"


@pytest.mark.parametrize("engine_ends", [True, False])
def test_the_final_report_leaves_the_engine_s_state_or_says_the_process_died(
    prefect: PrefectHarness, queue: Queue, run_with: Any, engine_ends: bool
) -> None:
    run_id = new_run(prefect, queue)

    async def body(backend: PrefectBackend) -> None:
        claimed = await backend.claim([uuid.UUID(queue.id)], uuid.uuid4(), [], 1, 5)
        run = claimed[0].flow_run.id
        await backend.set_state(run, StateProposal(type=StateType.RUNNING))
        assert propose(prefect, run_id, "RUNNING")["status"] == "ACCEPT"  # the engine
        if engine_ends:
            assert propose(prefect, run_id, "COMPLETED")["status"] == "ACCEPT"
        await backend.set_state(
            run,
            StateProposal(
                type=StateType.CRASHED,
                message="killed by signal SIGKILL\nlast lines of stderr:\nboom",
                runner_info={"exit_code": -9},
            ),
        )

    run_with(body)
    state = prefect.state(run_id)
    if engine_ends:
        assert state["type"] == "COMPLETED"
    else:
        assert state["type"] == "CRASHED"
        assert state["message"] == (
            "flow process was killed by signal SIGKILL without reporting a final state\n"
            "last lines of stderr:\nboom"
        )


def test_a_fractional_heartbeat_interval_is_sent_as_whole_seconds(
    prefect: PrefectHarness, queue: Queue, run_with: Any
) -> None:
    """Prefect's heartbeat takes an integer interval (0.5 would be a 422)."""

    async def body(backend: PrefectBackend) -> None:
        return None

    run_with(body)  # heartbeats with 0.5 s
    workers = prefect.ok("POST", f"work_pools/{queue.pool}/workers/filter", json={})
    assert [(w["name"], w["heartbeat_interval_seconds"], w["status"]) for w in workers] == [
        (AGENT, 1, "ONLINE")
    ]


def test_the_name_loophole_exists_and_default_name_claims_are_refused(
    prefect: PrefectHarness, queue: Queue
) -> None:
    """PREFECT.md: on 3.x a PENDING with a custom name is accepted on an already PENDING run
    (so a second agent could take it); the agent's claims carry the default name and are
    refused. Prefect 2.20.27 refuses the custom name too."""
    run_id = new_run(prefect, queue)
    assert propose(prefect, run_id, "PENDING")["status"] == "ACCEPT"
    assert propose(prefect, run_id, "PENDING")["status"] == "ABORT"
    renamed = propose(prefect, run_id, "PENDING", name=unique("Claimed"))
    assert renamed["status"] == ("ACCEPT" if prefect.kind == "prefect3" else "ABORT"), renamed
