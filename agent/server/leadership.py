"""Background work on one replica at a time: the scheduler, the lease reaper (which also marks
nothing twice), Late marking, webhook delivery and bundle garbage collection run only on the
replica that holds the leader lock.

On SQLite there is one server, and it always leads. On PostgreSQL the lock is a session-level
advisory lock held on a connection of its own: it is the database that decides who leads, and
it lets go as soon as the leader's session ends. A replica that dies (SIGKILL, a crash) closes
its connection and the lock is free at once; a replica whose host vanishes is dropped by
PostgreSQL's TCP keepalives (:data:`KEEPALIVE`, about 10 s). Replicas that do not lead try
again every ``check_seconds``, so another takes over within that.

The leader checks its own session every ``check_seconds``; when the check fails or hangs it
stops its duties at once, before PostgreSQL can let another replica take the lock, so that two
replicas do not lead at the same time. Even then nothing would be done twice: each duty is safe
under concurrency on its own (scheduled runs have idempotency keys, leases and Late marks are
compare-and-set transitions in write transactions, webhook deliveries are leased rows, a bundle
is deleted in a write transaction that checks nothing names it);
leadership keeps the replicas from doing the same work for nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import anyio
import structlog
from sqlalchemy import URL

from agent.server.wakeup_relay import conninfo

if TYPE_CHECKING:
    from psycopg import AsyncConnection

log = structlog.get_logger("agent.server.leadership")

#: pg_advisory_lock key of the leader ("flowagent leader").
LEADER_LOCK_KEY = 0x666C6F77_00000003
# Server side (the session options) and client side: a vanished peer is noticed in ~10 s.
KEEPALIVE: dict[str, str | int] = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 2,
    "options": "-c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 -c tcp_keepalives_count=2",
}


class Leadership:
    """Holds the leader lock, when it can, and runs the duties while it does."""

    def __init__(self, url: URL | None, check_seconds: float = 1.0) -> None:
        """``url``: the PostgreSQL database the replicas share; None on SQLite (always leads)."""
        self._conninfo = None if url is None else conninfo(url)
        self.check_seconds = check_seconds
        self.is_leader = url is None
        self._connection: AsyncConnection[Any] | None = None

    async def _connect(self) -> AsyncConnection[Any]:
        import psycopg
        from psycopg.conninfo import make_conninfo

        dsn = make_conninfo(self._conninfo or "", connect_timeout=5, **KEEPALIVE)
        return await psycopg.AsyncConnection.connect(dsn, autocommit=True)

    async def try_acquire(self) -> bool:
        """Take the lock if no one holds it; whether this replica leads now."""
        if self._conninfo is None or self.is_leader:
            return self.is_leader
        import psycopg

        try:
            if self._connection is None or self._connection.closed:
                self._connection = await self._connect()
            connection = self._connection
            with anyio.fail_after(self.check_seconds * 5):
                cursor = await connection.execute(
                    "SELECT pg_try_advisory_lock(%s)", (LEADER_LOCK_KEY,)
                )
                row = await cursor.fetchone()
        except (psycopg.Error, TimeoutError) as exc:
            log.warning("leadership_unavailable", error=str(exc).strip() or "timed out")
            await self._drop()
            return False
        self.is_leader = bool(row and row[0])
        if self.is_leader:
            log.info("leadership_acquired")
        return self.is_leader

    async def _still_leader(self) -> bool:
        import psycopg

        connection = self._connection
        if connection is None:
            return False
        try:
            with anyio.fail_after(self.check_seconds):
                await connection.execute("SELECT 1")
        except (psycopg.Error, TimeoutError) as exc:
            log.warning("leadership_lost", error=str(exc).strip() or "the check timed out")
            return False
        return True

    async def _drop(self) -> None:
        self.is_leader = False
        connection, self._connection = self._connection, None
        if connection is not None:
            with anyio.move_on_after(1):
                await connection.close()

    async def run(self, duties: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Forever: wait to lead, run ``duties`` while leading, stop them when that ends."""
        if self._conninfo is None:
            await duties()
            return
        try:
            while True:
                # Polling, not an event: only the database can say the lock is free.
                while not await self.try_acquire():  # noqa: ASYNC110
                    await anyio.sleep(self.check_seconds)
                async with anyio.create_task_group() as leading:
                    leading.start_soon(duties, name="leader-duties")
                    while await self._still_leader():  # noqa: ASYNC110
                        await anyio.sleep(self.check_seconds)
                    leading.cancel_scope.cancel()
                await self._drop()
        finally:
            with anyio.CancelScope(shield=True):
                await self._drop()  # a replica that stops lets another lead at once
