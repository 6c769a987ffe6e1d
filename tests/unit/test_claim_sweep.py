"""The long poll and the claim sweep on a real SQLite file, in one event loop, no server: held
claims look at the database once, not once a second each, and a due run no one poked about is
still handed to one of them by the sweep, within its lead."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.models import ClaimedRun, ClaimRequest, Heartbeat
from agent.server import claims
from agent.server.claim_sweep import claim_sweep, due_queues
from agent.server.claims import ClaimWakeups, claim
from agent.server.db import Database
from agent.server.lifecycle import new_run
from agent.server.orm import DeploymentRow
from agent.server.routes.agents import _heartbeat
from tests.unit.server_rows import add_deployment, migrated_database

HELD = 40


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    with migrated_database(tmp_path) as database:
        yield database


def queue_with_deployment(db: Database) -> tuple[uuid.UUID, uuid.UUID]:
    with db.write() as session:
        deployment = add_deployment(session, datetime.now(UTC))
        return deployment.work_queue_id, deployment.id


def agents(db: Database, queue_id: uuid.UUID, n: int) -> list[uuid.UUID]:
    beats = (Heartbeat(name=f"agent-{i}", work_queue_id=queue_id) for i in range(n))
    return [_heartbeat(db, beat, 30, datetime.now(UTC))[0].id for beat in beats]


def add_run(db: Database, deployment_id: uuid.UUID, start: datetime) -> uuid.UUID:
    """A SCHEDULED run written straight to the database: no route, so no one is poked."""
    with db.write() as session:
        run = new_run(
            session,
            session.get_one(DeploymentRow, deployment_id),
            parameters={},
            tags=[],
            env={},
            expected_start_time=start,
        )
        return run.id


async def never_gone() -> bool:
    return False


def counting(monkeypatch: pytest.MonkeyPatch, name: str) -> list[uuid.UUID]:
    """The agent of every call of ``claims.<name>``, in order."""
    calls: list[uuid.UUID] = []
    real = getattr(claims, name)

    def counted(db: Database, queue_ids: Any, request: ClaimRequest) -> claims.ClaimAttempt:
        calls.append(request.agent_id)
        result: claims.ClaimAttempt = real(db, queue_ids, request)
        return result

    monkeypatch.setattr(claims, name, counted)
    return calls


async def hold(
    db: Database, notifier: ClaimWakeups, queue_id: uuid.UUID, agent_ids: list[uuid.UUID], **kw: Any
) -> list[list[ClaimedRun]]:
    return await asyncio.gather(
        *(
            claim(db, notifier, [queue_id], ClaimRequest(agent_id=a, **kw), never_gone)
            for a in agent_ids
        )
    )


def test_idle_held_claims_look_at_the_database_once_each(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue_id, _ = queue_with_deployment(db)
    ids = agents(db, queue_id, HELD)
    looks = counting(monkeypatch, "claim_once")
    notifier = ClaimWakeups()

    async def main() -> list[list[ClaimedRun]]:
        sweep = asyncio.ensure_future(claim_sweep(db, notifier, interval=0.1))
        try:
            return await hold(db, notifier, queue_id, ids, wait_seconds=2.5)
        finally:
            sweep.cancel()

    assert asyncio.run(main()) == [[]] * HELD
    # Each looked once as it arrived and was then left alone: 25 sweeps found nothing due.
    assert sorted(looks) == sorted(ids)
    assert notifier.held() == {}  # every claim that left is forgotten


def test_a_due_run_no_one_poked_about_is_handed_out_by_the_sweep(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue_id, deployment_id = queue_with_deployment(db)
    ids = agents(db, queue_id, HELD)
    notifier = ClaimWakeups()

    async def main() -> list[list[ClaimedRun]]:
        sweep = asyncio.ensure_future(claim_sweep(db, notifier, interval=0.1))
        held = asyncio.ensure_future(hold(db, notifier, queue_id, ids, wait_seconds=5))
        await asyncio.sleep(0.5)  # every claim is held, none has anything
        run_id = await asyncio.to_thread(add_run, db, deployment_id, datetime.now(UTC))
        try:
            answers = await asyncio.wait_for(held, 10)
        finally:
            sweep.cancel()
        assert [c.flow_run.id for answer in answers for c in answer] == [run_id]
        return answers

    answers = asyncio.run(main())
    assert sum(1 for answer in answers if answer) == 1  # one agent, once


def test_the_sweep_reports_a_queue_only_when_a_run_is_due_within_its_lead(db: Database) -> None:
    queue_id, deployment_id = queue_with_deployment(db)
    other_id, _ = queue_with_deployment(db)
    add_run(db, deployment_id, datetime.now(UTC) + timedelta(seconds=30))

    assert due_queues(db, {queue_id: 0.0, other_id: 60.0}) == set()
    assert due_queues(db, {queue_id: 20.0}) == set()
    assert due_queues(db, {queue_id: 45.0, other_id: 0.0}) == {queue_id}
    add_run(db, deployment_id, datetime.now(UTC) - timedelta(seconds=1))
    assert due_queues(db, {queue_id: 0.0}) == {queue_id}


def test_a_held_claims_lead_counts_while_it_is_held(db: Database) -> None:
    notifier = ClaimWakeups()
    queue_id = uuid.uuid4()
    with notifier.holding([queue_id], 5.0):
        with notifier.holding([queue_id], 20.0):
            assert notifier.held() == {queue_id: 20.0}
        assert notifier.held() == {queue_id: 5.0}
    assert notifier.held() == {}
