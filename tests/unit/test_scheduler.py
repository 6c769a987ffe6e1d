"""Which times a schedule fires at: cron (with time zones and DST), interval + anchor, one-off.

Pure functions, no database, no clock.
"""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from agent.models import ScheduleCreate, parse_duration
from agent.server.scheduler import Spec, last_before, next_time, times_between

PARIS = ZoneInfo("Europe/Paris")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def paris(*args: int) -> datetime:
    return datetime(*args, tzinfo=PARIS)


def test_cron_window_includes_its_start_and_excludes_its_end() -> None:
    spec = Spec(cron="0 * * * *")
    assert times_between(spec, utc(2024, 1, 1, 10), utc(2024, 1, 1, 13), 100) == [
        utc(2024, 1, 1, 10),
        utc(2024, 1, 1, 11),
        utc(2024, 1, 1, 12),
    ]


def test_cron_window_respects_the_limit() -> None:
    spec = Spec(cron="*/5 * * * *")
    found = times_between(spec, utc(2024, 1, 1), utc(2024, 1, 2), 7)
    assert len(found) == 7
    assert found[-1] == utc(2024, 1, 1, 0, 30)


def test_cron_is_read_in_its_time_zone() -> None:
    spec = Spec(cron="0 9 * * *", timezone="Europe/Paris")
    winter = times_between(spec, utc(2024, 1, 10), utc(2024, 1, 11), 10)
    summer = times_between(spec, utc(2024, 7, 10), utc(2024, 7, 11), 10)
    assert winter == [utc(2024, 1, 10, 8)]  # 09:00 CET
    assert summer == [utc(2024, 7, 10, 7)]  # 09:00 CEST


def test_cron_with_seconds() -> None:
    spec = Spec(cron="* * * * * */20")  # croniter reads a 6th field as seconds
    found = times_between(spec, utc(2024, 1, 1, 0, 0, 0), utc(2024, 1, 1, 0, 1, 0), 10)
    assert found == [utc(2024, 1, 1, 0, 0, s) for s in (0, 20, 40)]


def test_dst_spring_forward_in_paris() -> None:
    """2024-03-31 02:00 CET → 03:00 CEST: the local day has 23 hours."""
    hourly = Spec(cron="0 * * * *", timezone="Europe/Paris")
    day = times_between(hourly, paris(2024, 3, 31), paris(2024, 4, 1), 100)
    assert len(day) == 23
    assert [t.astimezone(PARIS).hour for t in day][:4] == [0, 1, 3, 4]
    # As croniter does: a daily time that does not exist that day fires at 03:00 instead.
    daily = Spec(cron="30 2 * * *", timezone="Europe/Paris")
    found = times_between(daily, paris(2024, 3, 30), paris(2024, 4, 2), 10)
    assert [t.astimezone(PARIS).isoformat() for t in found] == [
        "2024-03-30T02:30:00+01:00",
        "2024-03-31T03:00:00+02:00",
        "2024-04-01T02:30:00+02:00",
    ]


def test_dst_fall_back_in_paris() -> None:
    """2024-10-27 03:00 CEST → 02:00 CET: the local day has 25 hours; 02:30 happens twice."""
    hourly = Spec(cron="0 * * * *", timezone="Europe/Paris")
    day = times_between(hourly, paris(2024, 10, 27), paris(2024, 10, 28), 100)
    assert len(day) == 25
    assert len(set(day)) == 25  # distinct instants, so distinct runs
    daily = Spec(cron="30 2 * * *", timezone="Europe/Paris")
    found = times_between(daily, paris(2024, 10, 27), paris(2024, 10, 28), 10)
    assert [t.isoformat() for t in found] == [
        "2024-10-27T00:30:00+00:00",  # 02:30 CEST
        "2024-10-27T01:30:00+00:00",  # 02:30 CET, as croniter does
    ]


def test_interval_steps_from_its_anchor() -> None:
    spec = Spec(interval=timedelta(minutes=15), anchor=utc(2024, 1, 1, 10, 7))
    found = times_between(spec, utc(2024, 1, 1, 10, 30), utc(2024, 1, 1, 11, 30), 100)
    assert found == [
        utc(2024, 1, 1, 10, 37),
        utc(2024, 1, 1, 10, 52),
        utc(2024, 1, 1, 11, 7),
        utc(2024, 1, 1, 11, 22),
    ]
    # A time exactly on a step is included at the start of a window.
    assert times_between(spec, utc(2024, 1, 1, 10, 37), utc(2024, 1, 1, 10, 38), 5) == [
        utc(2024, 1, 1, 10, 37)
    ]


def test_interval_never_fires_before_its_anchor() -> None:
    spec = Spec(interval=timedelta(hours=1), anchor=utc(2024, 1, 2))
    assert times_between(spec, utc(2024, 1, 1), utc(2024, 1, 2, 2), 10) == [
        utc(2024, 1, 2),
        utc(2024, 1, 2, 1),
    ]
    assert last_before(spec, utc(2024, 1, 2)) is None
    assert last_before(spec, utc(2024, 1, 2, 0, 0, 1)) == utc(2024, 1, 2)


def test_interval_ignores_dst() -> None:
    """An interval is elapsed time: 24 h after 09:00 CET on the eve of DST is 10:00 CEST."""
    spec = Spec(interval=timedelta(days=1), anchor=paris(2024, 3, 30, 9))
    found = times_between(spec, paris(2024, 3, 30), paris(2024, 4, 1), 10)
    assert [t.astimezone(PARIS).hour for t in found] == [9, 10]


def test_one_off() -> None:
    spec = Spec(at=utc(2024, 5, 1, 12))
    assert times_between(spec, utc(2024, 5, 1), utc(2024, 5, 2), 10) == [utc(2024, 5, 1, 12)]
    assert times_between(spec, utc(2024, 5, 1, 12, 0, 1), utc(2024, 5, 2), 10) == []
    assert last_before(spec, utc(2024, 5, 2)) == utc(2024, 5, 1, 12)
    assert last_before(spec, utc(2024, 5, 1, 12)) is None
    assert next_time(spec, utc(2024, 5, 2)) is None


def test_last_before_is_strictly_before() -> None:
    spec = Spec(cron="0 * * * *")
    assert last_before(spec, utc(2024, 1, 1, 10)) == utc(2024, 1, 1, 9)
    assert last_before(spec, utc(2024, 1, 1, 10, 0, 0, 1)) == utc(2024, 1, 1, 10)
    interval = Spec(interval=timedelta(minutes=10), anchor=utc(2024, 1, 1))
    assert last_before(interval, utc(2024, 1, 1, 1)) == utc(2024, 1, 1, 0, 50)
    assert last_before(interval, utc(2024, 1, 1, 1, 0, 0, 1)) == utc(2024, 1, 1, 1)


@pytest.mark.parametrize(
    "spec",
    [
        Spec(cron="*/7 * * * *", timezone="Europe/Paris"),
        Spec(cron="*/20 * * * *", timezone="America/New_York"),
        Spec(interval=timedelta(seconds=97), anchor=utc(2024, 3, 30, 23, 59, 59)),
    ],
    ids=["cron-paris", "cron-new-york", "interval"],
)
def test_windows_cut_anywhere_give_no_duplicates_and_no_gaps(spec: Spec) -> None:
    """Ticks see consecutive windows [a, b), [b, c) …: together exactly the whole window."""
    start, end = utc(2024, 3, 30, 21), utc(2024, 3, 31, 4)  # across the spring-forward
    whole = times_between(spec, start, end, 10_000)
    rng = random.Random(7)
    cuts = sorted(start + timedelta(seconds=rng.uniform(0, 7 * 3600)) for _ in range(40))
    edges = [start, *cuts, end]
    pieces = [t for a, b in itertools.pairwise(edges) for t in times_between(spec, a, b, 10_000)]
    assert pieces == whole
    assert len(whole) > 10


def test_durations_parse() -> None:
    assert parse_duration("30s") == 30
    assert parse_duration("15m") == 900
    assert parse_duration("2h") == 7200
    assert parse_duration("1d") == 86400
    assert parse_duration("90") == 90
    assert parse_duration(1.5) == 1.5
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("15 minutes")


def test_schedule_create_checks_its_fields() -> None:
    assert ScheduleCreate(interval_seconds="15m").interval_seconds == 900  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="exactly one"):
        ScheduleCreate(cron="0 * * * *", interval_seconds=60)
    with pytest.raises(ValueError, match="exactly one"):
        ScheduleCreate()
    with pytest.raises(ValueError, match="unknown time zone"):
        ScheduleCreate(cron="0 * * * *", timezone="Mars/Olympus")
    with pytest.raises(ValueError, match="anchor"):
        ScheduleCreate(cron="0 * * * *", anchor=utc(2024, 1, 1))
