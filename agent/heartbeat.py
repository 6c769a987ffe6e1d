"""The heartbeat side task: tells the server this agent is alive and how loaded its host is."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable
from uuid import UUID

import structlog

import agent
from agent.backends.base import Backend
from agent.errors import AuthError, FlowAgentError
from agent.models import AgentRecord, Heartbeat, WorkQueue
from agent.resources import host_metrics

log = structlog.get_logger("agent.heartbeat")


class Heartbeater:
    def __init__(
        self,
        backend: Backend,
        *,
        name: str,
        queue: WorkQueue,
        tags: tuple[str, ...],
        interval: float,
        runs_in_flight: Callable[[], int],
    ) -> None:
        self._backend = backend
        self._name = name
        self._queue = queue
        self._tags = tags
        self._interval = interval
        self._runs_in_flight = runs_in_flight
        self.failures = 0

    def _beat(self) -> Heartbeat:
        return Heartbeat(
            name=self._name,
            work_queue_id=self._queue.id,
            tags=list(self._tags),
            hostname=socket.gethostname(),
            pid=os.getpid(),
            version=agent.__version__,
            runs_in_flight=self._runs_in_flight(),
            heartbeat_interval_seconds=self._interval,
            metrics=host_metrics(),
        )

    async def register(self) -> UUID:
        """The first heartbeat: gives this agent its id (stable for its name)."""
        record: AgentRecord = await self._backend.heartbeat(self._beat())
        return record.id

    async def run(self) -> None:
        """Side task: beat every interval until cancelled; only bad credentials stop it."""
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self._backend.heartbeat(self._beat())
            except AuthError:
                raise
            except FlowAgentError as exc:
                self.failures += 1
                log.warning("heartbeat_failed", error=str(exc), failures=self.failures)
