"""Agent logging (structlog) and shipping of run output to the server as run logs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Awaitable, Callable, Sequence
from uuid import UUID

import structlog

from agent.models import LogLineCreate, LogStream, utcnow
from agent.redaction import Redactor

log = structlog.get_logger("agent.logs")


def configure_logging(
    level: str = "info", fmt: str = "auto", redactor: Redactor | None = None
) -> None:
    """JSON lines when stderr is not a TTY (journald, Docker), readable columns when it is.

    With a ``redactor``, secret values are masked in every line (see agent/redaction.py).
    """
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            *([redactor] if redactor is not None else []),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


SendLogs = Callable[[UUID, Sequence[LogLineCreate]], Awaitable[None]]


class LogShipper:
    """Buffers each run's output lines and sends them to the server in batches.

    Lines are sent while the run goes on (every ``interval`` seconds or once ``batch`` lines are
    waiting), and :meth:`flush` sends the rest before the run's final state is reported, so a
    terminal run's logs are complete on the server.
    """

    def __init__(self, send: SendLogs, *, interval: float = 0.2, batch: int = 500) -> None:
        self._send = send
        self._interval = interval
        self._batch = batch
        self._buffers: dict[UUID, list[LogLineCreate]] = {}
        self._locks: dict[UUID, asyncio.Lock] = {}
        self._wake = asyncio.Event()

    def add(self, run_id: UUID, stream: str, line: str, level: str = "INFO") -> None:
        buffer = self._buffers.setdefault(run_id, [])
        buffer.append(
            LogLineCreate(timestamp=utcnow(), stream=LogStream(stream), level=level, line=line)
        )
        if len(buffer) >= self._batch:
            self._wake.set()

    def sink_for(self, run_id: UUID) -> Callable[[str, str], None]:
        def sink(stream: str, line: str) -> None:
            self.add(run_id, stream, line, "ERROR" if stream == "stderr" else "INFO")

        return sink

    async def flush(self, run_id: UUID) -> None:
        lock = self._locks.setdefault(run_id, asyncio.Lock())
        # One sender per run at a time keeps lines in order on the server. ``send`` (the
        # outbox) never loses a batch: what the server cannot take now is spooled to disk.
        async with lock:
            while lines := self._buffers.get(run_id):
                chunk, self._buffers[run_id] = lines[: self._batch], lines[self._batch :]
                await self._send(run_id, chunk)

    def forget(self, run_id: UUID) -> None:
        self._buffers.pop(run_id, None)
        self._locks.pop(run_id, None)

    async def run(self) -> None:
        """Side task: flush every run's buffer periodically."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()
            for run_id in [r for r, lines in self._buffers.items() if lines]:
                await self.flush(run_id)
