"""Heartbeats start an interval apart, however long the server takes to answer each one."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime
from typing import cast
from uuid import uuid4

from agent.backends.base import Backend
from agent.heartbeat import Heartbeater
from agent.models import AgentRecord, AgentStatus, Heartbeat, HostMetrics, WorkQueue

INTERVAL = 0.2


class SlowServer:
    """Answers each heartbeat after ``answer`` seconds; records when each was sent."""

    def __init__(self, answer: float, beats: int) -> None:
        self.answer = answer
        self.beats = beats
        self.sent: list[float] = []
        self.enough = asyncio.Event()

    async def heartbeat(self, beat: Heartbeat) -> AgentRecord:
        self.sent.append(asyncio.get_running_loop().time())
        if len(self.sent) >= self.beats:
            self.enough.set()
        await asyncio.sleep(self.answer)
        return AgentRecord(
            id=uuid4(),
            name=beat.name,
            work_queue_id=beat.work_queue_id,
            tags=beat.tags,
            hostname=beat.hostname,
            pid=beat.pid,
            version=beat.version,
            runs_in_flight=beat.runs_in_flight,
            heartbeat_interval_seconds=beat.heartbeat_interval_seconds,
            metrics=beat.metrics,
            last_heartbeat=datetime.now(UTC),
            status=AgentStatus.ONLINE,
        )


def beats_sent(beats: int, answer: float) -> list[float]:
    server = SlowServer(answer, beats)
    queue = WorkQueue(
        id=uuid4(),
        name="q",
        tags=[],
        concurrency_limit=None,
        paused=False,
        created=datetime.now(UTC),
    )
    heartbeater = Heartbeater(
        cast(Backend, server),
        name="a",
        queues=lambda: [queue.id],
        tags=(),
        interval=INTERVAL,
        runs_in_flight=lambda: 0,
        host=lambda: HostMetrics(cpu_percent=0, memory_percent=0),  # type: ignore[call-arg]
    )

    async def go() -> None:
        task = asyncio.create_task(heartbeater.run())
        await server.enough.wait()
        task.cancel()

    asyncio.run(go())
    return server.sent


def test_beats_start_an_interval_apart_not_an_interval_after_each_answer() -> None:
    answer = INTERVAL * 0.75
    sent = beats_sent(6, answer)
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    # An interval after each answer would make every gap INTERVAL + answer (0.35 s).
    assert sum(gaps) / len(gaps) < INTERVAL + answer / 2, gaps


def test_a_beat_answered_later_than_an_interval_is_followed_at_once() -> None:
    sent = beats_sent(4, INTERVAL * 2)
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    # The next beat goes as soon as the late one is answered, no burst to catch up.
    assert all(INTERVAL * 2 <= gap < INTERVAL * 3 for gap in gaps), gaps
