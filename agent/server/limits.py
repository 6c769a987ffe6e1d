"""Concurrency limits beyond the queue: per deployment and per tag, checked by the claim.

A run goes PENDING only inside the claim's write transaction (``BEGIN IMMEDIATE``; on
PostgreSQL the write lock, which a claim takes whenever :func:`any_limits` says a limit could
apply), and the counts below are read inside that same transaction, so no number of agents or
concurrent claims can together push a limit over: the count a claim checks is the count it
changes.
A run holds a slot while PENDING, RUNNING or CANCELLING, whoever holds it.

A due run over a limit is not an error: it stays SCHEDULED under the name
``AwaitingConcurrencySlot`` (not Late: it is not late, it is held back) and the claim goes on
to the runs behind it, so one busy deployment does not hold up another's runs in the queue.
With a deployment's ``cancel-new`` strategy it is CANCELLED instead.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass

from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session

from agent.models import Collision, StateType
from agent.server.orm import ConcurrencyLimitRow, DeploymentRow, FlowRunRow

# Runs that hold a slot (the same states as a queue's limit counts).
SLOT_STATES: tuple[str, ...] = (
    StateType.PENDING.value,
    StateType.RUNNING.value,
    StateType.CANCELLING.value,
)

#: Notifying this "queue" wakes every held claimer: a tag's slot frees runs in any queue.
ANY_QUEUE = uuid.UUID(int=0)


def any_limits(session: Session) -> bool:
    """Whether any tag or deployment has a concurrency limit."""
    return bool(
        session.scalar(
            select(
                exists(select(ConcurrencyLimitRow.id))
                | exists().where(DeploymentRow.concurrency_limit.is_not(None))
            )
        )
    )


@dataclass(frozen=True)
class Blocked:
    """Why a run cannot go now, and whether it is to be cancelled rather than wait."""

    reason: str
    cancel: bool = False
    # Held back by its deployment's own limit: every later run of the deployment is too.
    deployment_full: bool = False


class ClaimLimits:
    """The limits and their counts, as one claim transaction sees and changes them."""

    def __init__(self, session: Session) -> None:
        self._session = session
        self.tag_limits: dict[str, int] = {
            row.tag: row.limit for row in session.scalars(select(ConcurrencyLimitRow))
        }
        self._tag_active: Counter[str] = Counter()
        if self.tag_limits:
            for tags in session.scalars(
                select(FlowRunRow.tags).where(FlowRunRow.state_type.in_(SLOT_STATES))
            ):
                self._tag_active.update(set(tags) & self.tag_limits.keys())
        self._deployment_active: dict[uuid.UUID, int] = {}
        self.any = bool(self.tag_limits) or bool(
            session.scalar(select(exists().where(DeploymentRow.concurrency_limit.is_not(None))))
        )

    def _deployment_count(self, deployment_id: uuid.UUID) -> int:
        if deployment_id not in self._deployment_active:
            self._deployment_active[deployment_id] = (
                self._session.scalar(
                    select(func.count())
                    .select_from(FlowRunRow)
                    .where(
                        FlowRunRow.deployment_id == deployment_id,
                        FlowRunRow.state_type.in_(SLOT_STATES),
                    )
                )
                or 0
            )
        return self._deployment_active[deployment_id]

    def blocked(self, run: FlowRunRow, deployment: DeploymentRow) -> Blocked | None:
        """Why ``run`` may not take a slot now, or None when it may."""
        limit = deployment.concurrency_limit
        if limit is not None and self._deployment_count(deployment.id) >= limit:
            return Blocked(
                f"deployment {deployment.name} at its concurrency limit ({limit})",
                cancel=deployment.collision_strategy == Collision.CANCEL_NEW.value,
                deployment_full=True,
            )
        for tag in sorted(set(run.tags) & self.tag_limits.keys()):
            if self._tag_active[tag] >= self.tag_limits[tag]:
                return Blocked(f"tag {tag} at its concurrency limit ({self.tag_limits[tag]})")
        return None

    def full_deployments(self) -> list[uuid.UUID]:
        """The deployments this claim has seen at their limit (so far)."""
        found = []
        for deployment_id, active in self._deployment_active.items():
            row = self._session.get(DeploymentRow, deployment_id)
            limit = None if row is None else row.concurrency_limit
            if limit is not None and active >= limit:
                found.append(deployment_id)
        return found

    def hold(self, run: FlowRunRow, deployment: DeploymentRow) -> None:
        """Count ``run`` as holding its slots from now on (it is being claimed)."""
        if deployment.concurrency_limit is not None:
            self._deployment_active[deployment.id] = self._deployment_count(deployment.id) + 1
        self._tag_active.update(set(run.tags) & self.tag_limits.keys())


def frees_tag_slot(session: Session, run: FlowRunRow) -> bool:
    """Whether ``run`` carries a tag that has a limit: its end may let runs in any queue go."""
    if not run.tags:
        return False
    return (
        session.scalar(
            select(ConcurrencyLimitRow.id).where(ConcurrencyLimitRow.tag.in_(run.tags)).limit(1)
        )
        is not None
    )
