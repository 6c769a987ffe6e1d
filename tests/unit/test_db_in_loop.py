"""Where ``Database.run_small`` does an agent's write on SQLite (a real file, no server): in the
event loop's thread, asleep there while another of the server's threads holds the write lock
for a moment, and in a worker thread only once the lock stays taken.

Handed to a worker thread at once, such writes under a fleet made the lock's holder slower (GIL
hand-offs), so more writes found it held and went to threads too: a convoy the server did not
leave (docs/PERFORMANCE.md, "The load generator's share, the garbage collector, and a convoy").
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from agent.models import utcnow
from agent.server.db import Database
from agent.server.orm import WorkQueueRow
from tests.unit.server_rows import migrated_database


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    with migrated_database(tmp_path) as database:
        yield database


def add_queue(db: Database, name: str) -> int:
    """One write, as an agent's request makes: the thread it ran in."""
    with db.write() as session:
        session.add(
            WorkQueueRow(id=uuid.uuid4(), name=name, tags=[], paused=False, created=utcnow())
        )
    return threading.get_ident()


def queues_named(db: Database, name: str) -> int:
    with db.read() as session:
        return int(session.scalar(select(func.count()).where(WorkQueueRow.name == name)) or 0)


def hold_the_write_lock(db: Database, seconds: float) -> tuple[threading.Thread, threading.Event]:
    """Another thread of the server writing (the scheduler, say) for ``seconds``."""
    holding = threading.Event()

    def write() -> None:
        with db.write():
            holding.set()
            time.sleep(seconds)

    thread = threading.Thread(target=write)
    thread.start()
    assert holding.wait(5)
    return thread, holding


def run_small_while_held(db: Database, held_for: float, name: str) -> tuple[int, int, int]:
    """(the event loop's thread, the thread the write ran in, how often another task of the
    loop ran while the write waited)."""

    async def main() -> tuple[int, int, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.001)
                ticks += 1

        ticking = asyncio.create_task(ticker())
        holder, _ = hold_the_write_lock(db, held_for)
        try:
            before = ticks
            ran_in = await db.run_small(add_queue, db, name)
            during = ticks - before
        finally:
            ticking.cancel()
            holder.join()
        return threading.get_ident(), ran_in, during

    return asyncio.run(main())


def test_a_write_that_finds_the_lock_held_for_a_moment_waits_in_the_event_loop(
    db: Database,
) -> None:
    loop_thread, ran_in, ticks = run_small_while_held(db, 0.005, "brief")
    assert ran_in == loop_thread
    assert queues_named(db, "brief") == 1
    assert ticks > 0  # it waited asleep: the loop went on serving meanwhile


def test_a_write_that_finds_the_lock_held_for_long_goes_to_a_worker_thread(db: Database) -> None:
    loop_thread, ran_in, ticks = run_small_while_held(db, 0.5, "long")
    assert ran_in != loop_thread
    assert queues_named(db, "long") == 1  # written once, by the worker, after the holder
    assert ticks > 0
