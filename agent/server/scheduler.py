"""The scheduler: turns deployments' schedules into SCHEDULED runs ahead of time.

The pure part (no database, no clock) answers "when does this schedule fire in [start, end)":
:class:`Spec`, :func:`times_between`, :func:`last_before`. Cron expressions are read in the
schedule's time zone and DST is whatever croniter does (a time skipped by spring-forward fires at
the first valid minute after it; a time repeated by fall-back fires twice). Intervals are exact
steps of elapsed time from their anchor, so they ignore DST.

:func:`tick` is one pass of the scheduler, each schedule in its own write transaction:

1. Runs missed by more than ``missed_after`` (the server was down, or no agent took them) are
   not all fired: with ``catchup="one"`` only the latest missed time keeps (or gets) a run,
   with ``"none"`` none does; the others are CANCELLED as "Skipped".
2. Runs are made for the times after the schedule's cursor up to ``now + horizon``, with at most
   ``max_runs`` of the schedule waiting ahead. Each run carries the key
   ``schedule:<schedule id>:<time>`` under a UNIQUE index and the cursor moves in the same
   transaction, so neither ticks, restarts nor two server processes make a time twice or skip
   one.
3. Every SCHEDULED run not started ``late_after`` past its time is marked "Late" (it stays
   SCHEDULED).

:class:`Scheduler` runs :func:`tick` every ``tick_seconds`` and whenever it is poked (a schedule
was created or changed). Its clock is injectable, so tests move time without sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import structlog
from croniter import croniter
from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from agent.config import Settings
from agent.models import AWAITING_SLOT, Catchup, FlowRun, StateType, utcnow
from agent.server.claims import ClaimWakeups
from agent.server.db import Database
from agent.server.lifecycle import new_run, record_state
from agent.server.limits import ClaimLimits
from agent.server.orm import DeploymentRow, FlowRunRow, ScheduleRow

log = structlog.get_logger("agent.server.scheduler")

Clock = Callable[[], datetime]

LATE = "Late"
SKIPPED = "Skipped"
_TICK = timedelta(microseconds=1)
# Bounds the work of one tick: the rest waits for the next one.
_LATE_BATCH = 500


@dataclass(frozen=True)
class SchedulerConfig:
    """How far ahead runs are made and how late and missed runs are treated.

    Attributes:
        tick_seconds: time between two passes (a change to a schedule triggers one at once).
        horizon: runs are made this far ahead…
        max_runs: …but no more than this many waiting per schedule.
        late_after: a SCHEDULED run not started this long after its time is marked Late.
        missed_after: a scheduled time older than this is "missed": the schedule's ``catchup``
            decides whether it still runs (one run for the latest such time) or not.
    """

    tick_seconds: float = 5.0
    horizon: timedelta = timedelta(seconds=Settings.schedule_horizon_seconds)
    max_runs: int = Settings.schedule_max_runs
    late_after: timedelta = timedelta(seconds=Settings.late_after_seconds)
    missed_after: timedelta = timedelta(seconds=Settings.missed_after_seconds)


# --------------------------------------------------------------------------- when it fires


@dataclass(frozen=True)
class Spec:
    """A schedule's timing alone: one of ``cron``, ``interval`` (from ``anchor``) or ``at``."""

    cron: str | None = None
    interval: timedelta | None = None
    anchor: datetime | None = None
    at: datetime | None = None
    timezone: str = "UTC"


def spec_of(row: ScheduleRow) -> Spec:
    return Spec(
        cron=row.cron,
        interval=None if row.interval_seconds is None else timedelta(seconds=row.interval_seconds),
        anchor=row.anchor or row.created,
        at=row.at,
        timezone=row.timezone,
    )


def _as_utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC)


def _steps(spec: Spec, moment: datetime) -> tuple[datetime, int, int]:
    """The anchor, the step and ``moment - anchor`` of an interval spec, in microseconds."""
    assert spec.interval is not None and spec.anchor is not None
    # In UTC: arithmetic on datetimes of one ZoneInfo would be wall-clock arithmetic.
    anchor = _as_utc(spec.anchor)
    step = spec.interval // _TICK
    return anchor, max(step, 1), (_as_utc(moment) - anchor) // _TICK


def times_between(spec: Spec, start: datetime, end: datetime, limit: int) -> list[datetime]:
    """The times ``start <= t < end`` the schedule fires at, ascending, at most ``limit``."""
    found: list[datetime] = []
    if limit <= 0 or start >= end:
        return found
    if spec.cron is not None:
        tz = ZoneInfo(spec.timezone)
        it = croniter(spec.cron, (start - _TICK).astimezone(tz))
        while len(found) < limit:
            moment = _as_utc(it.get_next(datetime))
            if moment >= end:
                break
            found.append(moment)
    elif spec.interval is not None:
        anchor, step, offset = _steps(spec, start)
        k = max(0, -(-offset // step))  # ceil: the first step at or after start
        while len(found) < limit:
            moment = anchor + timedelta(microseconds=k * step)
            if moment >= end:
                break
            found.append(moment)
            k += 1
    elif spec.at is not None and start <= spec.at < end:
        found.append(spec.at)
    return found


def last_before(spec: Spec, cutoff: datetime) -> datetime | None:
    """The latest time ``t < cutoff`` the schedule fires at, if any."""
    if spec.cron is not None:
        it = croniter(spec.cron, cutoff.astimezone(ZoneInfo(spec.timezone)))
        return _as_utc(it.get_prev(datetime))
    if spec.interval is not None:
        anchor, step, offset = _steps(spec, cutoff)
        k = -(-offset // step) - 1  # the last step strictly before cutoff
        return anchor + timedelta(microseconds=k * step) if k >= 0 else None
    if spec.at is not None and spec.at < cutoff:
        return spec.at
    return None


def next_time(spec: Spec, after: datetime) -> datetime | None:
    """The first time at or after ``after`` (looking up to ~4 years ahead)."""
    found = times_between(spec, after, after + timedelta(days=1500), 1)
    return found[0] if found else None


def is_valid_cron(expression: str) -> bool:
    return bool(croniter.is_valid(expression))


# --------------------------------------------------------------------------- one pass


@dataclass
class TickReport:
    created: int = 0
    skipped: int = 0
    late: int = 0
    wake_queues: set[uuid.UUID] = field(default_factory=set)


def run_key(schedule_id: uuid.UUID, moment: datetime) -> str:
    return f"schedule:{schedule_id}:{_as_utc(moment).isoformat()}"


def _start(row: ScheduleRow, spec: Spec) -> datetime:
    """The first time the schedule has not dealt with yet."""
    if row.cursor is not None:
        return row.cursor + _TICK
    # A one-off in the past is a missed run (the catch-up policy decides), not nothing.
    return min(row.created, spec.at) if spec.at is not None else row.created


def _missed_runs(session: Session, schedule_id: uuid.UUID, cutoff: datetime) -> list[FlowRunRow]:
    """The schedule's first attempts still waiting although their time is past ``cutoff``."""
    return list(
        session.scalars(
            select(FlowRunRow)
            .where(
                FlowRunRow.schedule_id == schedule_id,
                FlowRunRow.state_type == StateType.SCHEDULED.value,
                FlowRunRow.attempt == 1,
                FlowRunRow.expected_start_time < cutoff,
            )
            .order_by(FlowRunRow.expected_start_time.desc())
        )
    )


def _make_runs(
    session: Session,
    row: ScheduleRow,
    deployment: DeploymentRow,
    times: list[datetime],
    message: str | None = None,
) -> int:
    """A run per time, except where the time's run exists already (insert-or-ignore)."""
    keys = {run_key(row.id, moment): moment for moment in times}
    existing = set(
        session.scalars(
            select(FlowRunRow.idempotency_key).where(FlowRunRow.idempotency_key.in_(list(keys)))
        )
    )
    made = 0
    for key, moment in keys.items():
        if key in existing:
            continue
        run = new_run(
            session,
            deployment,
            parameters=dict(deployment.parameters),
            tags=list(deployment.tags),
            env=dict(deployment.env),
            expected_start_time=moment,
            message=message,
        )
        run.idempotency_key = key
        run.schedule_id = row.id
        made += 1
    return made


def _skip(session: Session, run: FlowRunRow, row: ScheduleRow, now: datetime) -> None:
    late = now - run.expected_start_time
    record_state(
        session,
        run,
        StateType.CANCELLED,
        now=now,
        name=SKIPPED,
        message=f"missed: due {late.total_seconds() / 60:.0f} min ago and never started; "
        f"catch-up policy {row.catchup!r}",
    )


def advance(
    session: Session, row: ScheduleRow, config: SchedulerConfig, now: datetime
) -> TickReport:
    """Bring one schedule up to date at ``now`` (inside a write transaction)."""
    report = TickReport()
    deployment = session.get(DeploymentRow, row.deployment_id)
    if deployment is None or not row.active:
        return report
    spec = spec_of(row)
    start = _start(row, spec)
    cutoff = now - config.missed_after
    cursor = row.cursor

    # 1. Missed times: never made (downtime) and made but never started.
    never_made = None
    if start < cutoff:
        latest = last_before(spec, cutoff)
        never_made = latest if latest is not None and latest >= start else None
        start, cursor = cutoff, cutoff - _TICK
    waiting = _missed_runs(session, row.id, cutoff)
    keep: FlowRunRow | None = None
    if row.catchup == Catchup.ONE.value:
        if never_made is not None and (not waiting or never_made > waiting[0].expected_start_time):
            report.created += _make_runs(
                session, row, deployment, [never_made], message="catch-up run for missed times"
            )
        elif waiting:
            keep = waiting[0]
    for run in waiting:
        if run is not keep:
            _skip(session, run, row, now)
            report.skipped += 1

    # 2. Upcoming times, up to the horizon and the per-schedule limit.
    end = now + config.horizon
    ahead = session.scalar(
        select(func.count())
        .select_from(FlowRunRow)
        .where(
            FlowRunRow.schedule_id == row.id,
            FlowRunRow.state_type == StateType.SCHEDULED.value,
            FlowRunRow.expected_start_time >= now,
        )
    )
    limit = config.max_runs - (ahead or 0)
    times = times_between(spec, start, end, max(limit, 0))
    report.created += _make_runs(session, row, deployment, times)
    if times and len(times) == limit:
        cursor = times[-1]  # stopped by the limit: go on from here next time
    elif limit > 0:
        cursor = end - _TICK  # every time before the horizon is dealt with
    if cursor is not None and (row.cursor is None or cursor > row.cursor):
        row.cursor = cursor
    if report.created or report.skipped:
        report.wake_queues.add(deployment.work_queue_id)
    return report


def _late_runs(threshold: datetime) -> Select[FlowRunRow]:
    return select(FlowRunRow).where(
        FlowRunRow.state_type == StateType.SCHEDULED.value,
        FlowRunRow.expected_start_time < threshold,
        FlowRunRow.state_name != LATE,
        # Held back by a concurrency limit, not late: it goes as soon as a slot frees.
        FlowRunRow.state_name != AWAITING_SLOT,
    )


def shown_late(run: FlowRun, now: datetime, late_after: timedelta) -> FlowRun:
    """``run`` as it will be once the scheduler's next pass has looked at it: Late when due
    and not started for ``late_after`` (so a preview need not wait for the pass)."""
    late = run.state.type is StateType.SCHEDULED and run.expected_start_time < now - late_after
    if not late or run.state.name in (LATE, AWAITING_SLOT):
        return run
    return run.model_copy(update={"state": run.state.model_copy(update={"name": LATE})})


def _first_late(session: Session, threshold: datetime) -> FlowRunRow | None:
    return session.scalars(_late_runs(threshold).limit(1)).first()


def mark_late(session: Session, now: datetime, late_after: timedelta) -> int:
    """Mark SCHEDULED runs not started ``late_after`` past their time as Late, or as
    waiting for a concurrency slot when a limit holds them back (the claim that would show
    that may not have reached them)."""
    query = _late_runs(now - late_after).order_by(FlowRunRow.expected_start_time)
    rows = session.scalars(query.limit(_LATE_BATCH)).all()
    limits = ClaimLimits(session) if rows else None
    for run in rows:
        deployment = session.get(DeploymentRow, run.deployment_id)
        blocked = None
        if limits is not None and limits.any and deployment is not None:
            blocked = limits.blocked(run, deployment)
        if blocked is not None:
            record_state(
                session,
                run,
                StateType.SCHEDULED,
                now=now,
                name=AWAITING_SLOT,
                message=blocked.reason,
            )
            continue
        record_state(
            session,
            run,
            StateType.SCHEDULED,
            now=now,
            name=LATE,
            message=f"due at {run.expected_start_time.isoformat(timespec='seconds')}, "
            f"not started within {late_after.total_seconds():g}s",
        )
    return len(rows)


def _due_schedules(db: Database, config: SchedulerConfig, now: datetime) -> list[uuid.UUID]:
    """The active schedules with something to do: a new time within the horizon, or missed
    runs. A read, so that an idle pass takes no write lock."""
    cutoff = now - config.missed_after
    end = now + config.horizon
    with db.read() as session:
        with_missed = set(
            session.scalars(
                select(FlowRunRow.schedule_id).where(
                    FlowRunRow.schedule_id.is_not(None),
                    FlowRunRow.state_type == StateType.SCHEDULED.value,
                    FlowRunRow.attempt == 1,
                    FlowRunRow.expected_start_time < cutoff,
                )
            )
        )
        due = []
        for row in session.scalars(select(ScheduleRow).where(ScheduleRow.active.is_(True))):
            spec = spec_of(row)
            if row.id in with_missed or times_between(spec, _start(row, spec), end, 1):
                due.append(row.id)
        return due


def tick(db: Database, config: SchedulerConfig, now: datetime) -> TickReport:
    """One pass over every schedule, then the Late marks. Safe to run anywhere, any time."""
    total = TickReport()
    for schedule_id in _due_schedules(db, config, now):
        with db.write() as session:
            row = session.get(ScheduleRow, schedule_id)
            if row is None:
                continue  # deleted since we looked
            report = advance(session, row, config, now)
        total.created += report.created
        total.skipped += report.skipped
        total.wake_queues |= report.wake_queues
    with db.read() as session:  # the common case, nothing late, takes no write lock
        anything_late = _first_late(session, now - config.late_after) is not None
    if anything_late:
        with db.write() as session:
            total.late = mark_late(session, now, config.late_after)
    return total


# --------------------------------------------------------------------------- the task


class Scheduler:
    """The server's background scheduler: ticks every ``tick_seconds`` and when poked."""

    def __init__(
        self, db: Database, notifier: ClaimWakeups, config: SchedulerConfig, clock: Clock = utcnow
    ) -> None:
        self.db = db
        self.notifier = notifier
        self.config = config
        self.clock = clock
        self._poked = asyncio.Event()

    def poke(self) -> None:
        """Tick soon: a schedule changed. Call from the event loop."""
        self._poked.set()

    async def tick_now(self) -> TickReport:
        report = await self.db.run(tick, self.db, self.config, self.clock())
        # Claimers waiting on a later next-due time must see runs that are due sooner.
        self.notifier.notify(report.wake_queues)
        if report.created or report.skipped or report.late:
            log.info(
                "scheduler_tick",
                runs_made=report.created,
                skipped=report.skipped,
                marked_late=report.late,
            )
        return report

    async def run(self) -> None:
        """Forever: tick, then wait for the interval or a poke."""
        while True:
            self._poked.clear()
            try:
                await self.tick_now()
            except Exception:  # a locked database now and then must not end scheduling
                log.exception("scheduler_tick_failed", retry_in=self.config.tick_seconds)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poked.wait(), self.config.tick_seconds)
