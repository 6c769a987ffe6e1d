"""The database engine, its transactions, and the schema migrations.

SQLite: every write transaction starts with ``BEGIN IMMEDIATE``: it takes SQLite's write lock
before the first read, so a read-then-write (a claim, a state transition) can neither deadlock
against another writer nor act on rows another writer is about to change, even when two server
processes share one database file. Reads use a plain deferred ``BEGIN`` and, thanks to WAL,
never wait for writers. What agents send all the time (heartbeats, claims, reports) runs in the
event loop's own thread (:meth:`Database.run_small`) and never blocks it: a write that finds
the lock held tries again there a few times, asleep meanwhile, then goes to a worker thread.

PostgreSQL (several replicas on one database): a write transaction takes one transaction-level
advisory lock first, which gives the same one-writer-at-a-time guarantee across every replica,
and locks the runs it reads (``FOR UPDATE``), since claims (:meth:`Database.claim`) do not take
that lock: they lock only the rows they hand out (``SKIP LOCKED``), so claimers neither wait
for each other nor for writers, and a writer never acts on a run a claim is taking. Heartbeats
and a run's own reports (state, runner info, logs, report batches) do not take it either
(``write(serialized=False)``): a heartbeat changes one agent's row, which it locks, and its
runs; a report changes its runs; and runs are locked as any writer locks them. Behind the write
lock they would queue behind every other write of every replica, and a lease must not run out
while a heartbeat waits in that queue. What needs more than rows (claims under a concurrency
limit, the scheduler, lease expiry, creating and changing queues, deployments, limits) still
takes it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import ParamSpec, TypeVar

import anyio
import anyio.to_thread
from sqlalchemy import URL, Engine, Select, event, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import ORMExecuteState, Session, sessionmaker

from agent.server.engines import (
    WRITE_OPTION,
    create_engine_for,
    create_sqlite_engine,
    is_busy,
)
from agent.server.orm import FlowRunRow
from agent.server.schema import migrate, reset_database

# Where callers have always found them.
__all__ = ["Database", "create_sqlite_engine", "migrate", "reset_database"]

#: pg_advisory_xact_lock key of write transactions ("flowagent writer").
WRITE_LOCK_KEY = 0x666C6F77_00000001
# The rows a PostgreSQL writer locks as it reads them: runs, which claims and heartbeats change
# beside it. (Agents are not: a writer that changes an agent's row locks it itself, and a lock
# taken on every read of an agent would make writers that read one wait for claims.)
_CLAIMED_ENTITIES = (FlowRunRow,)
_LOCK_ROWS = "flowagent_lock_rows"

P = ParamSpec("P")
T = TypeVar("T")


def _lock_rows_read(state: ORMExecuteState) -> None:
    """In a PostgreSQL write session, load runs ``FOR UPDATE``: a claim or a heartbeat running
    beside the writer (they do not take the write lock) cannot change them under it."""
    if not state.is_select or not state.session.info.get(_LOCK_ROWS):
        return
    statement = state.statement
    if not isinstance(statement, Select) or statement._for_update_arg is not None:
        return
    described = statement.column_descriptions
    # Whole rows of runs or agents only: FOR UPDATE is refused with aggregates, and a column
    # read (a count, ids) is not what a writer changes afterwards.
    if described and all(d.get("type") in _CLAIMED_ENTITIES for d in described):
        state.statement = statement.with_for_update()


class _WouldWait(Exception):
    """Raised in the event loop's thread by a write that would have to wait for a lock."""


#: How long the event loop lets work that found the write lock held wait (sleeping, serving
#: everything else) before trying again there, then hands it to a worker thread (~60 ms in
#: all): the server's own background writes hold the lock for milliseconds. Handed to threads
#: at once, a heartbeat under a fleet added GIL hand-offs to the lock's holder, which then held
#: it longer, and hundreds of writes a second went to threads: a convoy the server stayed in.
_IN_LOOP_RETRIES = (0.001, 0.002, 0.004, 0.008, 0.015, 0.03)


@dataclass
class _InLoop:
    """Set while :meth:`Database.run_small` runs work in the event loop's thread."""

    wrote: bool = False


_in_loop: ContextVar[_InLoop | None] = ContextVar("flowagent_db_in_loop", default=None)


class Database:
    """The engine plus the kinds of session the routes use."""

    def __init__(self, target: Path | URL) -> None:
        self.engine = create_engine_for(target)
        self.is_postgres = self.engine.dialect.name == "postgresql"
        # SQLite writes run in the event loop by run_small: their connections never wait for
        # another process's write (see write()).
        self._loop_engine = None if self.is_postgres else _without_busy_wait(self.engine)
        self._reader = sessionmaker(self.engine, expire_on_commit=False)
        self._writer = sessionmaker(
            self.engine.execution_options(**{WRITE_OPTION: True}),
            expire_on_commit=False,
            info={_LOCK_ROWS: self.is_postgres},
        )
        self._claimer = sessionmaker(self.engine, expire_on_commit=False)
        self._loop_writer = (
            None
            if self._loop_engine is None
            else sessionmaker(
                self._loop_engine.execution_options(**{WRITE_OPTION: True}), expire_on_commit=False
            )
        )
        if self.is_postgres:
            event.listen(self._writer, "do_orm_execute", _lock_rows_read)
        # Writers of this process queue here rather than in SQLite's busy handler, which
        # sleeps and retries: under load from dozens of agents some writer would lose every
        # retry for the whole busy timeout and answer 503. SQLite's lock still guards the file
        # against other processes (PostgreSQL's advisory lock, against other replicas).
        self._write_lock = threading.RLock()

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A session for reads; closing it rolls its transaction back."""
        with self._reader() as session:
            yield session

    @contextmanager
    def write(self, *, serialized: bool = True) -> Iterator[Session]:
        """A session holding the write lock from its first statement; commits on success.

        ``serialized=False`` (PostgreSQL only; SQLite has one kind of write): no write lock,
        for a transaction whose rows' locks are all it needs.
        """
        if self.is_postgres and not serialized:
            with self._writer() as session, session.begin():
                yield session
            return
        in_loop = _in_loop.get()
        # (A second write of the same work waits like any: the first has committed.)
        if in_loop is not None and not in_loop.wrote and self._loop_writer is not None:
            with self._write_in_loop(in_loop, self._loop_writer) as session:
                yield session
            return
        with self._write_lock, self._writer() as session, session.begin():
            if self.is_postgres:
                session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": WRITE_LOCK_KEY})
            yield session

    @contextmanager
    def _write_in_loop(self, in_loop: _InLoop, writer: sessionmaker[Session]) -> Iterator[Session]:
        """A write in the event loop's thread, which must never block: another thread of ours
        holding the write lock, or another process holding SQLite's, is a :class:`_WouldWait`,
        and run_small tries again shortly, then hands the work to a worker thread (which
        waits, as writes always did)."""
        if not self._write_lock.acquire(blocking=False):
            raise _WouldWait
        try:
            with writer() as session:
                try:
                    session.connection()  # BEGIN IMMEDIATE: SQLite's lock, or "locked" at once
                except OperationalError as exc:
                    if is_busy(exc):
                        raise _WouldWait from exc
                    raise
                yield session
                session.commit()
                in_loop.wrote = True
        finally:
            self._write_lock.release()

    @contextmanager
    def claim(self) -> Iterator[Session]:
        """A session for a claim; commits on success.

        On SQLite it is a write session. On PostgreSQL it takes no lock of its own: the claim
        locks its agent's row and the runs it hands out (``SKIP LOCKED``), and takes the write
        lock (:meth:`lock_writes`) only when a concurrency limit needs counts that hold.
        """
        if not self.is_postgres:
            with self.write() as session:
                yield session
            return
        with self._claimer() as session, session.begin():
            yield session

    def lock_writes(self, session: Session) -> None:
        """Inside a claim session: wait for the write lock, as writers do (PostgreSQL)."""
        if self.is_postgres:
            session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": WRITE_LOCK_KEY})

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run blocking database work in a worker thread, off the event loop."""
        return await anyio.to_thread.run_sync(lambda: fn(*args, **kwargs))

    async def run_small(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a few row-sized statements that agents send all the time (heartbeats, claims,
        state reports, log batches): on SQLite in the event loop's own thread, elsewhere as
        :meth:`run` does.

        On SQLite such work takes well under a millisecond, and handing it to a worker thread
        cost four times that: the sqlite3 module lets go of the GIL around every call, and the
        worker and the event loop pass it back and forth (up to a 5 ms switch interval each
        time). Under a fleet's heartbeats the hand-offs, not the statements, filled the CPU.
        PostgreSQL's statements wait for the network and for row locks other replicas hold,
        which must not stop the event loop.
        """
        if self.is_postgres:
            return await self.run(fn, *args, **kwargs)
        for pause in (*_IN_LOOP_RETRIES, None):
            token = _in_loop.set(_InLoop())
            try:
                return fn(*args, **kwargs)
            except _WouldWait:
                pass  # nothing was written: each such function writes once, after its reads
            finally:
                _in_loop.reset(token)
            if pause is not None:
                await anyio.sleep(pause)
        return await self.run(fn, *args, **kwargs)

    def dispose(self) -> None:
        self.engine.dispose()
        if self._loop_engine is not None:
            self._loop_engine.dispose()


def _without_busy_wait(engine: Engine) -> Engine:
    return create_sqlite_engine(Path(engine.url.database or ""), busy_timeout_ms=0)
