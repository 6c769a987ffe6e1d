"""The log shipper bounds each run's buffer: a full one asks its runner to wait (room())."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

from agent.logs import LINE_OVERHEAD, LogShipper
from agent.models import LogLineCreate
from runners.output import output_room


def test_a_full_buffer_asks_for_a_pause_until_a_send_has_halved_it() -> None:
    async def scenario() -> None:
        sent: list[str] = []
        release = asyncio.Event()

        async def send(_run: uuid.UUID, lines: Sequence[LogLineCreate]) -> None:
            sent.extend(line.line for line in lines)
            await release.wait()

        line = "x" * (1000 - LINE_OVERHEAD)  # costs 1,000 bytes
        shipper = LogShipper(send, batch=10, max_buffer=20_000, max_batch_bytes=5_000)
        run = uuid.uuid4()
        sink = shipper.sink_for(run, lambda _stream, line: line.upper())
        for _ in range(19):
            sink("stdout", line)
        assert output_room(sink) is None
        sink("stdout", line)
        room = output_room(sink)
        assert room is not None and not room.done()

        flushing = asyncio.create_task(shipper.flush(run))
        await asyncio.sleep(0)
        # One batch of 5 taken (15,000 left): not yet half.
        assert not room.done() and shipper.buffered(run) == 15_000
        release.set()
        await flushing
        assert room.done() and shipper.buffered(run) == 0
        assert sent == [line.upper()] * 20  # redacted by the sink's function, all in order

    asyncio.run(scenario())


def test_forgetting_a_run_lets_its_runner_go() -> None:
    async def scenario() -> None:
        async def send(_run: uuid.UUID, _lines: Sequence[LogLineCreate]) -> None:
            return None

        shipper = LogShipper(send, max_buffer=1)
        run = uuid.uuid4()
        sink = shipper.sink_for(run)
        sink("stderr", "boom")
        room = output_room(sink)
        assert room is not None
        shipper.forget(run)
        assert room.done()

    asyncio.run(scenario())
