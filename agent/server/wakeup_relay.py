"""Long polls woken across replicas: PostgreSQL ``LISTEN``/``NOTIFY`` carries each replica's
claim wake-ups (:class:`~agent.server.claims.ClaimWakeups`) to every other replica.

A route pokes its own replica's wake-ups after its commit; the relay publishes the queue ids
on a channel, and every other replica's listener pokes its own waiters with them, so a run
created through replica A wakes a claim held on replica B at once. Each message names the
replica it came from, so a replica does not wake its waiters twice.

Nothing depends on a message arriving: each replica's claim sweep
(``agent/server/claim_sweep.py``) looks for due runs every
:data:`~agent.server.claims.RECHECK_SECONDS`, so while the database is away (or a message is
lost) pickup is slower, never wrong. After the listener reconnects it wakes every waiter,
since what it missed meanwhile is unknown.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable

import anyio
import structlog
from sqlalchemy import URL

from agent.server.claims import ClaimWakeups
from agent.server.limits import ANY_QUEUE

log = structlog.get_logger("agent.server.wakeup_relay")

CHANNEL = "flowagent_claims"
# NOTIFY payloads are limited to 8000 bytes: 37 bytes an id, with room for the origin.
_IDS_PER_MESSAGE = 150
_RECONNECT_SECONDS = (0.2, 0.5, 1.0, 2.0, 5.0)


def conninfo(url: URL) -> str:
    """A libpq connection string for psycopg from the server's SQLAlchemy URL."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


class WakeupRelay:
    """Publishes this replica's wake-ups and listens for the other replicas'."""

    def __init__(self, url: URL, wakeups: ClaimWakeups) -> None:
        self._conninfo = conninfo(url)
        self._wakeups = wakeups
        self._origin = uuid.uuid4().hex
        self._outbox: asyncio.Queue[frozenset[uuid.UUID]] = asyncio.Queue()
        wakeups.relays.append(self._outbox.put_nowait)

    async def run(self) -> None:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self._listen, name="wakeup-listener")
            tasks.start_soon(self._publish, name="wakeup-publisher")

    def _messages(self, queue_ids: Iterable[uuid.UUID]) -> list[str]:
        ids = sorted(str(q) for q in queue_ids)
        if str(ANY_QUEUE) in ids:
            ids = [str(ANY_QUEUE)]
        return [
            f"{self._origin}:{','.join(ids[i : i + _IDS_PER_MESSAGE])}"
            for i in range(0, len(ids), _IDS_PER_MESSAGE)
        ]

    def _received(self, payload: str) -> None:
        origin, _, ids = payload.partition(":")
        if origin == self._origin:
            return
        try:
            queue_ids = [uuid.UUID(raw) for raw in ids.split(",") if raw]
        except ValueError:
            log.warning("wakeup_unreadable", payload=payload[:200])
            return
        self._wakeups.notify(queue_ids, relayed=True)

    async def _listen(self) -> None:
        import psycopg

        failures = 0
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True
                ) as connection:
                    await connection.execute(f"LISTEN {CHANNEL}")
                    if failures:
                        log.info("wakeup_listener_reconnected")
                        # What the others published while we were away is lost: look again.
                        self._wakeups.notify([ANY_QUEUE], relayed=True)
                    failures = 0
                    async for notice in connection.notifies():
                        self._received(notice.payload)
            except psycopg.Error as exc:
                delay = _RECONNECT_SECONDS[min(failures, len(_RECONNECT_SECONDS) - 1)]
                failures += 1
                log.warning("wakeup_listener_lost", error=str(exc).strip(), retry_in=delay)
                await anyio.sleep(delay)

    async def _publish(self) -> None:
        import psycopg

        connection: psycopg.AsyncConnection[object] | None = None
        try:
            while True:
                wanted = set(await self._outbox.get())
                while not self._outbox.empty():  # one message for a burst of pokes
                    wanted |= self._outbox.get_nowait()
                # Twice: a connection the database dropped (a restart) is only found out by
                # using it, and the first message after that deserves a fresh one.
                for attempt in range(2):
                    try:
                        if connection is None or connection.closed:
                            connection = await psycopg.AsyncConnection.connect(
                                self._conninfo, autocommit=True
                            )
                        for message in self._messages(wanted):
                            await connection.execute("SELECT pg_notify(%s, %s)", (CHANNEL, message))
                        break
                    except psycopg.Error as exc:
                        # The other replicas' sweeps find the work within a second; nothing is lost.
                        if attempt:
                            log.warning("wakeup_publish_failed", error=str(exc).strip())
                        if connection is not None:
                            await connection.close()
                        connection = None
        finally:
            if connection is not None:
                await connection.close()
