"""Claiming Prefect runs: one agent among many, against a server that was not built for it.

A claim is a non-forced PENDING proposal under the default name, with one transition id per run.
What makes it delicate is that Prefect accepts PENDING on a run that already ended (COMPLETED
without a persisted result, CANCELLED…), while the list of scheduled runs an agent works from
can be seconds old by the time its proposal is applied. :class:`Claims` reads each run again
before proposing, and checks every won claim afterwards (:meth:`Claims.undisturbed`).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote
from uuid import UUID, uuid4

import structlog
from pydantic import TypeAdapter

from agent.backends.http import HttpClient
from agent.backends.prefect_tagqueues import is_tag_queue, tag_queue_runs
from agent.backends.prefect_wire import PQueue, PResult, PRun, PScheduled, is_ours
from agent.errors import NotFound, ServerUnavailable
from agent.models import utcnow

log = structlog.get_logger("agent.prefect")

#: Prefect's page size limit (PREFECT_SERVER_API_DEFAULT_LIMIT; more is a 422).
PAGE = 200


def pool_path(queue: PQueue) -> str:
    return f"work_pools/{quote(queue.work_pool_name or '', safe='')}"


@dataclass
class Held:
    """A run this agent proposed PENDING for and has not finished with."""

    transition_id: UUID
    progress: tuple[int, datetime | None]  # the run's, read just before the proposal
    confirmed: bool = False  # the server answered: it is ours
    handed_out: bool = False  # the daemon has it
    deployment_name: str = ""


class Claims:
    """The runs this agent proposed PENDING for and has not finished with, and how it takes
    more."""

    def __init__(self, http: HttpClient) -> None:
        self.http = http
        self.held: dict[UUID, Held] = {}

    async def take(
        self,
        queues: Sequence[PQueue],
        tags: Sequence[str],
        limit: int,
        message: str,
        prefetch_seconds: float = 0.0,
        every_queue: bool = False,
    ) -> list[PRun]:
        """Up to ``limit`` runs of the queues (of one pool) claimed for us: first those an
        earlier call took and never handed out, then runs carrying ``tags`` due within
        ``prefetch_seconds``, in the server's order (queue priority, then time). ``message``
        says who claims. ``every_queue``: of all the pool's queues, those made since too."""
        ours = await self.recover(limit)
        if len(ours) < limit:
            wanted = limit - len(ours)
            for run in await self.due_runs(queues, tags, wanted, prefetch_seconds, every_queue):
                if await self.propose_pending(run, message):
                    ours.append(run)
                    if len(ours) >= limit:
                        break
        return ours

    async def read(self, run_id: UUID) -> PRun:
        response = await self.http.request("GET", f"flow_runs/{run_id}")
        return PRun.model_validate(response.json())

    async def recover(self, limit: int) -> list[PRun]:
        """Runs proposed for by an earlier call whose answer, or hand-out, was lost."""
        ours: list[PRun] = []
        for run_id, held in list(self.held.items()):
            if held.handed_out or len(ours) >= limit:
                continue
            try:
                run = await self.read(run_id)
            except NotFound:
                del self.held[run_id]
                continue
            if (
                run.state_type == "PENDING"
                and run.state
                and run.state.transition_id == str(held.transition_id)
                and (held.confirmed or await self.undisturbed(run_id, held))
            ):
                held.confirmed = True
                ours.append(run)
            else:
                del self.held[run_id]
        return ours

    async def due_runs(
        self,
        queues: Sequence[PQueue],
        tags: Sequence[str],
        wanted: int,
        prefetch_seconds: float = 0.0,
        every_queue: bool = False,
    ) -> list[PRun]:
        # Tags are matched here, not by the server: look further down the list for them.
        limit = PAGE if tags else min(PAGE, wanted * 4 + 10)
        if len(queues) == 1 and is_tag_queue(queues[0]):
            # Its runs are other queues' runs that match its filter (prefect_tagqueues).
            runs = await tag_queue_runs(self.http, queues[0], limit, prefetch_seconds)
        else:
            ids = {q.id for q in queues}
            body: dict[str, Any] = {
                "scheduled_before": (utcnow() + timedelta(seconds=prefetch_seconds)).isoformat(),
                "limit": limit,
            }
            if not every_queue:
                body["work_queue_names"] = [q.name for q in queues]
            response = await self.http.request(
                "POST", f"{pool_path(queues[0])}/get_scheduled_flow_runs", json=body
            )
            runs = [
                item.flow_run
                for item in TypeAdapter(list[PScheduled]).validate_python(response.json())
                # Never a same-named queue's run; with every queue, the call is pool-scoped.
                if every_queue or item.work_queue_id in ids
            ]
        required = set(tags)
        due = []
        for run in runs:
            if (
                run.state_type == "SCHEDULED"
                and run.deployment_id is not None
                and required.issubset(run.tags)
                and run.id not in self.held
            ):
                due.append(run)
        return due

    async def propose_pending(self, run: PRun, message: str) -> bool:
        """Claim one run: True when it is ours. ABORT means another agent has it.

        Prefect accepts PENDING on a final state (COMPLETED when no result was persisted,
        CANCELLED…), and the scheduled list may be seconds old: a run another agent claimed and
        finished since would run again. So every attempt reads the run first and proposes only
        while it is SCHEDULED (a busy server's 503 is answered by reading again, not by sending
        the same proposal later), and a won claim is checked afterwards: the run must not have
        run or ended in between (:meth:`_undisturbed`), which closes the gap a server waiting on
        SQLite's lock leaves open.
        """
        transition = uuid4()
        body = {
            "state": {
                "type": "PENDING",
                # The default name: a custom one would be accepted on an already PENDING run.
                "message": message,
                "state_details": {"transition_id": str(transition)},
            },
            "force": False,
        }
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.http.retry_for
        delay = 0.1
        while True:
            try:
                fresh = await self.read(run.id)
            except NotFound:
                self.held.pop(run.id, None)
                return False
            if is_ours(fresh.state, "PENDING", transition):
                break  # an earlier attempt landed; its answer was lost
            if fresh.state_type != "SCHEDULED":
                self.held.pop(run.id, None)
                return False
            held = self.held[run.id] = Held(transition, fresh.progress)
            try:
                response = await self.http.request(
                    "POST", f"flow_runs/{run.id}/set_state", json=body, retry=False
                )
            except NotFound:
                self.held.pop(run.id, None)
                return False
            except ServerUnavailable:
                if loop.time() + delay > give_up:
                    return False  # still held, unconfirmed: the next claim asks the server
                await asyncio.sleep(random.uniform(delay / 2, delay))
                delay = min(delay * 2, 5.0)
                continue
            result = PResult.model_validate(response.json())
            if result.status == "ACCEPT" or is_ours(result.state, "PENDING", transition):
                fresh.state = result.state or fresh.state
                break
            self.held.pop(run.id, None)
            log.debug("claim_lost", run_id=str(run.id), status=result.status, reason=result.reason)
            return False
        held = self.held[run.id]
        if not await self.undisturbed(run.id, held):
            self.held.pop(run.id, None)
            return False
        held.confirmed = True
        run.state = fresh.state
        return True

    async def undisturbed(self, run_id: UUID, held: Held) -> bool:
        """Whether our PENDING replaced the SCHEDULED state we read; if the run ran or ended
        in between, put back the state we displaced and give the run up.

        Prefect counts a run when it enters RUNNING and stamps its end on a final state, so an
        unchanged (run_count, end_time) means nobody ran or ended it before our claim landed.
        State timestamps cannot tell: a server waiting on SQLite's lock stamps a proposal
        before it applies it, so ours may predate states that came before it.
        """
        run = await self.read(run_id)
        if run.progress == held.progress:
            return True
        if run.state is not None and run.state.transition_id == str(held.transition_id):
            await self._restore_before(run_id, held.transition_id)
        return False

    async def _restore_before(self, run_id: UUID, transition: UUID) -> None:
        """Put back the state our PENDING displaced: the latest of the others by timestamp
        (ours is still the current state, so all of them were applied before it; one agent's
        claim and its engine's states are proposed one after the other, in stamp order)."""
        response = await self.http.request(
            "GET", "flow_run_states/", params={"flow_run_id": str(run_id)}
        )
        others = [
            s
            for s in response.json()
            if str((s.get("state_details") or {}).get("transition_id")) != str(transition)
        ]
        if not others:
            return
        before = max(others, key=lambda s: datetime.fromisoformat(str(s["timestamp"])))
        restored = {
            "type": before["type"],
            "name": before.get("name"),
            "message": before.get("message"),
            "data": before.get("data"),
            "state_details": (before.get("state_details") or {}) | {"transition_id": str(uuid4())},
        }
        await self.http.request(
            "POST", f"flow_runs/{run_id}/set_state", json={"state": restored, "force": True}
        )
        log.warning(
            "claim_undone",
            run_id=str(run_id),
            restored=before["type"],
            reason="the run ran or ended after it was read as scheduled",
        )
