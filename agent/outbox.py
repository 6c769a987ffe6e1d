"""Delivering the agent's reports (states, log batches) so that none is lost or applied twice.

Every report is idempotent on the server: log batches carry a ``batch_id``, state reports an
``attempt`` (and a refused repeat of a report that did land is recognised here). So a report
can be retried freely; when the HTTP layer's retries run out it goes to the :class:`Spool` and
is delivered later, in order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from uuid import UUID, uuid4

import structlog
from pydantic import ValidationError

from agent.backends.base import Backend
from agent.errors import (
    AuthError,
    Conflict,
    DamagedFile,
    FlowAgentError,
    NotFound,
    ServerUnavailable,
)
from agent.models import LogLineCreate, StateProposal
from agent.spool import Entry, Spool

log = structlog.get_logger("agent.outbox")


class Outbox:
    def __init__(self, backend: Backend, spool: Spool, *, drain_interval: float = 2.0) -> None:
        self.backend = backend
        self.spool = spool
        self._drain_interval = drain_interval

    @property
    def spooled(self) -> int:
        return len(self.spool)

    # ------------------------------------------------------------------ reports

    async def set_state(self, run_id: UUID, proposal: StateProposal) -> bool:
        """Report a state; True when the server has it, False when it was spooled or refused."""
        if self.spool.holds(run_id):
            self.spool.put("state", run_id, proposal.model_dump(mode="json"))
            return False
        try:
            await self._deliver_state(run_id, proposal)
            return True
        except ServerUnavailable as exc:
            log.warning("state_report_failed", run_id=str(run_id), error=exc.message)
            self.spool.put("state", run_id, proposal.model_dump(mode="json"))
            return False
        except Conflict as exc:
            log.warning(
                "state_refused", run_id=str(run_id), state=proposal.type.value, reason=exc.message
            )
            return False

    async def send_logs(self, run_id: UUID, lines: Sequence[LogLineCreate]) -> None:
        batch_id = uuid4()
        if self.spool.holds(run_id):
            self._spool_logs(run_id, batch_id, lines)
            return
        try:
            await self.backend.send_logs(run_id, lines, batch_id=batch_id)
        except ServerUnavailable as exc:
            log.warning("logs_not_sent", run_id=str(run_id), error=exc.message)
            self._spool_logs(run_id, batch_id, lines)
        except NotFound:
            log.warning("logs_dropped_run_gone", run_id=str(run_id), lines=len(lines))

    def _spool_logs(self, run_id: UUID, batch_id: UUID, lines: Sequence[LogLineCreate]) -> None:
        self.spool.put(
            "logs",
            run_id,
            {"batch_id": str(batch_id), "lines": [line.model_dump(mode="json") for line in lines]},
        )

    async def _deliver_state(self, run_id: UUID, proposal: StateProposal) -> None:
        try:
            await self.backend.set_state(run_id, proposal)
        except Conflict:
            # A retry of a report whose first delivery landed (the answer was lost) is refused
            # as a repeat; that is success, not a conflict.
            run = await self.backend.get_run(run_id)
            if run.state.type is proposal.type and (
                proposal.attempt is None or run.attempt == proposal.attempt
            ):
                return
            raise

    # ------------------------------------------------------------------ the spool

    async def _deliver(self, entry: Entry) -> None:
        try:
            if entry.kind == "state":
                proposal = StateProposal.model_validate(entry.payload)
            elif entry.kind == "logs":
                lines = [LogLineCreate.model_validate(line) for line in entry.payload["lines"]]
                batch_id = UUID(entry.payload["batch_id"])
            else:
                raise DamagedFile(f"{entry.path.name}: no report of kind {entry.kind!r}")
        except (ValidationError, KeyError, TypeError, ValueError) as exc:
            raise DamagedFile(f"{entry.path.name} is not a {entry.kind} report: {exc}") from exc
        try:
            if entry.kind == "state":
                await self._deliver_state(entry.run_id, proposal)
            else:
                await self.backend.send_logs(entry.run_id, lines, batch_id=batch_id)
        except (Conflict, NotFound) as exc:
            # The server moved on (e.g. it expired the lease and crashed the run): a late
            # report must not be applied. It is logged and dropped, never retried.
            log.warning(
                "spooled_report_refused",
                kind=entry.kind,
                run_id=str(entry.run_id),
                reason=exc.message,
            )

    async def drain(self) -> int:
        try:
            return await self.spool.drain(self._deliver)
        except AuthError:
            raise
        except FlowAgentError as exc:
            log.info("spool_not_drained", spooled=len(self.spool), error=str(exc))
            return 0

    async def run(self) -> None:
        """Side task: deliver the spool whenever it holds something."""
        while True:
            await asyncio.sleep(self._drain_interval)
            if len(self.spool):
                delivered = await self.drain()
                if delivered:
                    log.info("spool_delivered", delivered=delivered, left=len(self.spool))
