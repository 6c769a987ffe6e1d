"""The scheduler's passes on a real SQLite file, with a fake clock: no sleeping, no server.

Each test moves "now" by hand and calls ``tick`` as the server's background task would;
a "restart" is a new ``Database`` on the same file, and "two servers" are two of them at once.
"""

from __future__ import annotations

import itertools
import threading
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from agent.models import Catchup, StateType
from agent.server.db import Database, migrate
from agent.server.orm import FlowRunRow, FlowRunStateRow, ScheduleRow
from agent.server.scheduler import SchedulerConfig, tick
from agent.server.settings import database_path
from tests.unit.server_rows import add_deployment

ZONE = ZoneInfo("Europe/Paris")
T0 = datetime(2024, 6, 3, 10, 0, 30, tzinfo=UTC)  # a Monday, 30 s past the hour
CONFIG = SchedulerConfig(
    horizon=timedelta(hours=6),
    max_runs=100,
    late_after=timedelta(seconds=15),
    missed_after=timedelta(minutes=5),
)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    migrate(tmp_path)
    return tmp_path


@pytest.fixture
def db(home: Path) -> Any:
    database = Database(database_path(home))
    yield database
    database.dispose()


def add_schedule(db: Database, created: datetime = T0, **fields: Any) -> uuid.UUID:
    """A queue, a deployment and one schedule on it (``fields`` are ScheduleRow columns)."""
    with db.write() as session:
        deployment = add_deployment(
            session, created, parameters={"x": 1}, tags=["nightly"], runner="subprocess"
        )
        values: dict[str, Any] = {
            "cron": None,
            "interval_seconds": None,
            "anchor": None,
            "at": None,
            "timezone": "UTC",
            "catchup": Catchup.ONE.value,
            "active": True,
            "cursor": None,
        } | fields
        row = ScheduleRow(
            id=uuid.uuid4(), deployment_id=deployment.id, created=created, updated=created, **values
        )
        session.add(row)
        return row.id


def runs(db: Database, schedule_id: uuid.UUID) -> list[FlowRunRow]:
    with db.read() as session:
        return list(
            session.scalars(
                select(FlowRunRow)
                .where(FlowRunRow.schedule_id == schedule_id)
                .order_by(FlowRunRow.expected_start_time)
            )
        )


def times(db: Database, schedule_id: uuid.UUID, state: str | None = None) -> list[datetime]:
    return [
        r.expected_start_time
        for r in runs(db, schedule_id)
        if state is None or r.state_type == state
    ]


def hourly(start: datetime, count: int) -> list[datetime]:
    first = start.replace(minute=0, second=0, microsecond=0)
    if first < start:
        first += timedelta(hours=1)
    return [first + timedelta(hours=i) for i in range(count)]


def test_runs_are_made_up_to_the_horizon_once(db: Database) -> None:
    schedule = add_schedule(db, cron="0 * * * *")
    report = tick(db, CONFIG, T0)
    assert report.created == 6
    assert times(db, schedule) == hourly(T0, 6)
    made = runs(db, schedule)
    assert {r.state_type for r in made} == {"SCHEDULED"}
    assert made[0].parameters == {"x": 1} and made[0].tags == ["nightly"]
    assert made[0].idempotency_key == f"schedule:{schedule}:2024-06-03T11:00:00+00:00"
    for _ in range(3):
        assert tick(db, CONFIG, T0 + timedelta(seconds=5)).created == 0
    assert len(runs(db, schedule)) == 6


def test_restarts_make_no_duplicates_and_leave_no_gaps(home: Path, db: Database) -> None:
    schedule = add_schedule(db, cron="*/10 * * * *")
    now = T0
    for step in range(12):  # 12 "server processes", each ticking twice, 37 min apart
        restarted = Database(database_path(home))
        try:
            for _ in range(2):
                tick(restarted, CONFIG, now)
        finally:
            restarted.dispose()
        now += timedelta(minutes=37)
        assert step >= 0
    made = times(db, schedule)
    assert len(made) == len(set(made))
    first = made[0]
    assert made == [first + timedelta(minutes=10 * i) for i in range(len(made))]
    assert made[-1] >= now - timedelta(minutes=37) + CONFIG.horizon - timedelta(minutes=10)


def test_two_servers_ticking_at_once_make_each_time_once(home: Path) -> None:
    dbs = [Database(database_path(home)) for _ in range(2)]
    schedule = add_schedule(dbs[0], interval_seconds=60.0, anchor=T0)
    errors: list[BaseException] = []

    def ticker(database: Database) -> None:
        try:
            for minute in range(0, 240, 7):
                tick(database, CONFIG, T0 + timedelta(minutes=minute))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=ticker, args=(d,)) for d in dbs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        made = times(dbs[0], schedule)
        counts = Counter(made)
        assert max(counts.values()) == 1
        assert made == sorted(made)
        # every minute from the anchor on, without a hole
        assert made == [T0 + timedelta(minutes=i) for i in range(len(made))]
    finally:
        for d in dbs:
            d.dispose()


def test_no_more_than_max_runs_wait_ahead(db: Database) -> None:
    schedule = add_schedule(db, interval_seconds=60.0, anchor=T0)
    assert tick(db, CONFIG, T0).created == 100  # 100 minutes, though the horizon is 6 h
    assert tick(db, CONFIG, T0).created == 0
    # Ten minutes on, ten of them are due (claimed or not): ten more are made, no more.
    later = T0 + timedelta(minutes=10)
    assert tick(db, CONFIG, later).created == 10
    assert times(db, schedule)[-1] == T0 + timedelta(minutes=109)


def test_a_late_run_is_marked_late_and_stays_scheduled(db: Database) -> None:
    schedule = add_schedule(db, cron="0 * * * *")
    tick(db, CONFIG, T0)
    first = runs(db, schedule)[0]
    assert first.state_name == "Scheduled"
    report = tick(db, CONFIG, first.expected_start_time + timedelta(seconds=10))
    assert report.late == 0
    report = tick(db, CONFIG, first.expected_start_time + timedelta(seconds=20))
    assert report.late == 1
    late = runs(db, schedule)[0]
    assert (late.state_type, late.state_name) == ("SCHEDULED", "Late")
    assert "not started within 15s" in (late.state_message or "")
    with db.read() as session:
        history = session.scalars(
            select(FlowRunStateRow.name).where(FlowRunStateRow.flow_run_id == late.id)
        ).all()
    assert history == ["Scheduled", "Late"]
    assert tick(db, CONFIG, first.expected_start_time + timedelta(seconds=40)).late == 0


@pytest.mark.parametrize("catchup", ["one", "none"])
def test_downtime_fires_one_catch_up_run_or_none(db: Database, catchup: str) -> None:
    schedule = add_schedule(db, cron="0 * * * *", catchup=catchup)
    tick(db, CONFIG, T0)  # runs up to 16:00 made ahead
    back = T0 + timedelta(days=2, minutes=20)  # the server (and agents) were down for 2 days
    report = tick(db, CONFIG, back)
    cutoff = back - CONFIG.missed_after
    waiting_missed = [
        r
        for r in runs(db, schedule)
        if r.state_type == "SCHEDULED" and r.expected_start_time < cutoff
    ]
    skipped = [r for r in runs(db, schedule) if r.state_name == "Skipped"]
    assert {r.state_type for r in skipped} == {"CANCELLED"}
    assert len(skipped) == 6  # the six made ahead before the downtime
    if catchup == "one":
        # one run for the latest missed time (made now: it was beyond the old horizon)
        assert [r.expected_start_time for r in waiting_missed] == [back.replace(minute=0, second=0)]
        with db.read() as session:
            history = session.scalars(
                select(FlowRunStateRow.message).where(
                    FlowRunStateRow.flow_run_id == waiting_missed[0].id
                )
            ).all()
        assert history[0] == "catch-up run for missed times"
    else:
        assert waiting_missed == []
    # …and the schedule goes on from now, on time
    upcoming = [r.expected_start_time for r in runs(db, schedule) if r.expected_start_time > back]
    assert upcoming == hourly(back, 6)
    assert report.skipped == 6
    # A second pass changes nothing.
    again = tick(db, CONFIG, back + timedelta(seconds=5))
    assert (again.created, again.skipped) == (0, 0)


def test_runs_waiting_while_agents_are_away_are_caught_up_once(db: Database) -> None:
    """The server ran, nobody claimed: the missed runs pile up; only the newest is kept."""
    schedule = add_schedule(db, interval_seconds=600.0, anchor=T0)
    now = T0
    while now < T0 + timedelta(hours=2):
        tick(db, CONFIG, now)
        now += timedelta(seconds=30)
    cutoff = now - CONFIG.missed_after
    missed = [
        r
        for r in runs(db, schedule)
        if r.state_type == "SCHEDULED" and r.expected_start_time < cutoff
    ]
    assert len(missed) == 1
    assert missed[0].expected_start_time == max(t for t in times(db, schedule) if t < cutoff)
    # within the bound: still due, not skipped
    recent = [t for t in times(db, schedule, "SCHEDULED") if cutoff <= t <= now]
    assert recent == [t for t in times(db, schedule) if cutoff <= t <= now]


def test_a_retrying_run_is_never_skipped(db: Database) -> None:
    schedule = add_schedule(db, cron="0 * * * *", catchup="none")
    tick(db, CONFIG, T0)
    with db.write() as session:
        run = session.scalars(select(FlowRunRow).where(FlowRunRow.schedule_id == schedule)).first()
        assert run is not None
        run.attempt = 2  # as lifecycle's retry leaves it: AwaitingRetry, attempt 2
        run_id = run.id
    tick(db, CONFIG, T0 + timedelta(days=1))
    with db.read() as session:
        again = session.get(FlowRunRow, run_id)
        assert again is not None and again.state_type == StateType.SCHEDULED.value


def test_a_paused_schedule_makes_nothing(db: Database) -> None:
    schedule = add_schedule(db, cron="0 * * * *", active=False)
    assert tick(db, CONFIG, T0).created == 0
    assert runs(db, schedule) == []


def test_one_off_schedules(db: Database) -> None:
    soon = add_schedule(db, at=T0 + timedelta(hours=2))
    past = add_schedule(db, at=T0 - timedelta(minutes=1))  # missed by less than the bound
    long_ago = add_schedule(db, at=T0 - timedelta(hours=3), catchup="none")
    tick(db, CONFIG, T0)
    assert times(db, soon) == [T0 + timedelta(hours=2)]
    assert times(db, past) == [T0 - timedelta(minutes=1)]
    assert times(db, long_ago) == []
    tick(db, CONFIG, T0 + timedelta(days=3))
    assert len(runs(db, soon)) == 1


def test_a_new_schedule_starts_from_its_creation(db: Database) -> None:
    schedule = add_schedule(db, cron="0 * * * *", created=T0)
    tick(db, CONFIG, T0 + timedelta(minutes=1))
    assert times(db, schedule)[0] == T0.replace(minute=0, second=0) + timedelta(hours=1)


def test_dst_fall_back_night_in_paris(db: Database) -> None:
    """Ticking through the night of 2024-10-27 every 10 min: 02:30 runs twice, as croniter
    says (both are distinct instants, so both are runs)."""
    start = datetime(2024, 10, 26, 20, 0, tzinfo=UTC)
    schedule = add_schedule(
        db, cron="30 * * * *", timezone="Europe/Paris", created=start, catchup="none"
    )
    now = start
    while now < start + timedelta(hours=10):
        tick(db, CONFIG, now)
        now += timedelta(minutes=10)
    made = times(db, schedule)
    assert len(made) == len(set(made))
    paris = [t.astimezone(ZONE).strftime("%H:%M%z") for t in made[:10]]
    assert paris[2:6] == ["00:30+0200", "01:30+0200", "02:30+0200", "02:30+0100"]
    assert all(b - a == timedelta(hours=1) for a, b in itertools.pairwise(made))
