"""A run's log lines and state pushed to a browser as server-sent events while the run goes on.

New lines wake the stream at once (``LogFeed.poke`` from the route that stores them); a state
change is seen within ``STATE_POLL_SECONDS`` (reports arrive by several routes; one poll of the
run's row is cheaper than wiring them all). A server with several replicas still answers within
that poll, since a poke only reaches streams in its own process.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Annotated

import anyio
from fastapi import Depends, Request

from agent.models import FlowRun, LogLine
from agent.server.db import Database

STATE_POLL_SECONDS = 1.0
# A comment line now and then keeps proxies from closing an idle stream.
KEEPALIVE_SECONDS = 15.0
PAGE = 500


class LogFeed:
    """Wakes the streams of a run when lines for it were stored.

    Each watched run has a version that every poke raises: a stream notes it before it reads
    the database and waits only while it is unchanged, so lines stored during the read are not
    missed until the next poll. Nothing is kept for a run nobody watches.
    """

    def __init__(self) -> None:
        self._watchers: dict[uuid.UUID, int] = {}
        self._versions: dict[uuid.UUID, int] = {}
        self._events: dict[uuid.UUID, anyio.Event] = {}

    @contextmanager
    def watching(self, run_id: uuid.UUID) -> Iterator[None]:
        self._watchers[run_id] = self._watchers.get(run_id, 0) + 1
        self._versions.setdefault(run_id, 0)
        try:
            yield
        finally:
            left = self._watchers[run_id] - 1
            if left:
                self._watchers[run_id] = left
            else:
                del self._watchers[run_id]
                self._versions.pop(run_id, None)
                self._events.pop(run_id, None)

    def version(self, run_id: uuid.UUID) -> int:
        return self._versions.get(run_id, 0)

    def poke(self, run_id: uuid.UUID) -> None:
        if run_id not in self._watchers:
            return
        self._versions[run_id] += 1
        event = self._events.pop(run_id, None)
        if event is not None:
            event.set()

    async def wait(self, run_id: uuid.UUID, seen: int, timeout: float) -> None:
        """Until ``run_id`` is poked past version ``seen``, or ``timeout`` seconds."""
        if self.version(run_id) != seen:
            return
        event = self._events.setdefault(run_id, anyio.Event())
        with anyio.move_on_after(timeout):
            await event.wait()


async def get_log_feed(request: Request) -> LogFeed:
    feed: LogFeed = request.app.state.log_feed
    return feed


Feed = Annotated[LogFeed, Depends(get_log_feed)]

# (db, run id, after line id, limit) -> the run and its next lines
ReadPage = Callable[[Database, uuid.UUID, int, int], tuple[FlowRun, list[LogLine]]]


def _event(name: str, data: str, ident: int | None = None) -> str:
    head = f"id: {ident}\n" if ident is not None else ""
    # model_dump_json never emits a raw newline, so one data line carries the whole document.
    return f"{head}event: {name}\ndata: {data}\n\n"


async def events(
    db: Database,
    feed: LogFeed,
    run_id: uuid.UUID,
    after: int,
    read: ReadPage,
) -> AsyncIterator[str]:
    """``run`` events when the run changes, ``log`` events for its lines (``id`` = the line's
    id, so a reconnect resumes with ``Last-Event-ID``), and ``end`` once the run is terminal and
    every line it wrote has been sent."""
    with feed.watching(run_id):
        async for event in _events(db, feed, run_id, after, read):
            yield event


async def _events(
    db: Database, feed: LogFeed, run_id: uuid.UUID, after: int, read: ReadPage
) -> AsyncIterator[str]:
    last_seen = after
    shown: tuple[object, ...] | None = None
    idle = 0.0
    while True:
        version = feed.version(run_id)
        # The run is read before its lines: once it is terminal, the lines read after it are
        # all of them (the agent ships every line before it reports the final state).
        run, lines = await db.run(read, db, run_id, last_seen, PAGE)
        state = (run.state.type, run.state.timestamp, run.attempt, len(run.runner_info))
        if state != shown:
            shown = state
            yield _event("run", run.model_dump_json())
        for line in lines:
            last_seen = line.id
            yield _event("log", line.model_dump_json(), line.id)
        if len(lines) == PAGE:
            continue
        if run.state.type.is_terminal:
            yield _event("end", "{}")
            return
        if lines:
            idle = 0.0
        elif idle >= KEEPALIVE_SECONDS:
            idle = 0.0
            yield ": keepalive\n\n"
        started = anyio.current_time()
        await feed.wait(run_id, version, STATE_POLL_SECONDS)
        idle += anyio.current_time() - started
