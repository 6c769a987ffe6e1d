"""The heartbeat side task: tells the server this agent is alive and how loaded its host is."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable
from uuid import UUID

import structlog

import agent
from agent.backends.base import Backend
from agent.errors import AuthError, FlowAgentError
from agent.models import DEFAULT_LEASE_SECONDS, AgentRecord, Heartbeat, HostMetrics
from agent.resources import host_metrics

log = structlog.get_logger("agent.heartbeat")


class Heartbeater:
    def __init__(
        self,
        backend: Backend,
        *,
        name: str,
        queues: Callable[[], list[UUID]],
        tags: tuple[str, ...],
        interval: float,
        runs_in_flight: Callable[[], int],
        host: Callable[[], HostMetrics] = host_metrics,
        held_runs: Callable[[], list[UUID]] | None = None,
    ) -> None:
        self._backend = backend
        self._name = name
        self._queues = queues
        self._tags = tags
        self._interval = interval
        self._runs_in_flight = runs_in_flight
        self._host = host
        self._held_runs = held_runs
        self.registered = False
        self.failures = 0
        self.lease_seconds = DEFAULT_LEASE_SECONDS  # until the server says
        # When the server last accepted a heartbeat sent at this (monotonic) time: the lease
        # runs from the server's receipt, which is later, so fencing from here is safe.
        self.last_renewed = time.monotonic()
        self.on_renewed: Callable[[], None] = lambda: None

    def _beat(self) -> Heartbeat:
        queues = self._queues()
        return Heartbeat(
            name=self._name,
            work_queue_id=queues[0],
            work_queue_ids=queues if len(queues) > 1 else None,
            tags=list(self._tags),
            hostname=socket.gethostname(),
            pid=os.getpid(),
            version=agent.__version__,
            runs_in_flight=self._runs_in_flight(),
            heartbeat_interval_seconds=self._interval,
            metrics=self._host(),
            # The first beat of a life lists nothing: the agent does not know yet what an earlier
            # life left behind. After it, the list is what the server may keep for us.
            run_ids=self._held_runs() if self.registered and self._held_runs else None,
        )

    async def register(self) -> UUID:
        """The first heartbeat: gives this agent its id (stable for its name)."""
        record = await self._beat_once()
        self.registered = True
        return record.id

    async def _beat_once(self) -> AgentRecord:
        sent = time.monotonic()
        record: AgentRecord = await self._backend.heartbeat(self._beat())
        self.lease_seconds = record.lease_seconds
        self.last_renewed = sent
        self.on_renewed()
        return record

    def since_renewed(self) -> float:
        return time.monotonic() - self.last_renewed

    async def run(self) -> None:
        """Side task: beat every interval until cancelled; only bad credentials stop it.

        Beats start an interval apart, however long each takes to be answered (a busy server,
        a loaded host): waiting a whole interval after each answer would stretch every gap by
        the answer's time.
        """
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            due += self._interval
            try:
                await self._beat_once()
            except AuthError:
                raise
            except FlowAgentError as exc:
                self.failures += 1
                log.warning("heartbeat_failed", error=str(exc), failures=self.failures)
            now = loop.time()
            due = max(due, now)  # late already: the next beat goes now, no burst to catch up
            await asyncio.sleep(due - now)
