"""Agent logging (structlog) and shipping of run output to the server as run logs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from uuid import UUID

import structlog

from agent.models import LogLineCreate, LogStream, utcnow
from agent.redaction import Redactor

log = structlog.get_logger("agent.logs")


def configure_logging(
    level: str = "info",
    fmt: str = "auto",
    redactor: Redactor | None = None,
    *,
    route_stdlib: bool = False,
) -> None:
    """JSON lines when stderr is not a TTY (journald, Docker), readable columns when it is.

    With a ``redactor``, secret values are masked in every line (see agent/redaction.py). With
    ``route_stdlib`` (the server), records of stdlib loggers — uvicorn, SQLAlchemy, Alembic —
    go through the same processors: one format on stderr, their message as the event. The agent
    leaves the root logger alone: the in-process runner hands flows' log records to their runs
    through it (runners/inprocess.py).
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
    if route_stdlib:
        _route_stdlib(level, renderer, redactor)


def _route_stdlib(
    level: str, renderer: structlog.typing.Processor, redactor: Redactor | None
) -> None:
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.stdlib.add_logger_name,
            structlog.stdlib.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            *([redactor] if redactor is not None else []),
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Libraries that say every request at INFO: what they have to say that matters is a warning.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


SendLogs = Callable[[UUID, Sequence[LogLineCreate]], Awaitable[None]]


#: What one buffered line costs the agent beyond its text (its model, timestamp, list slot).
LINE_OVERHEAD = 200


class LogShipper:
    """Buffers each run's output lines and sends them to the server in batches.

    Lines are sent while the run goes on (every ``interval`` seconds or once ``batch`` lines are
    waiting), and :meth:`flush` sends the rest before the run's final state is reported, so a
    terminal run's logs are complete on the server.

    A run's buffer holds about ``max_buffer`` bytes: once it holds more, its sink's ``room()``
    returns a future done when a send has brought it under half that again, and the runner
    stops reading the run's output meanwhile (runners/output.py). So a run that prints faster
    than the server takes its lines costs the agent a bounded amount of memory, and loses none.
    A batch is at most ``batch`` lines and about ``max_batch_bytes``.
    """

    def __init__(
        self,
        send: SendLogs,
        *,
        interval: float = 0.2,
        batch: int = 500,
        max_buffer: int = 2 * 1024 * 1024,
        max_batch_bytes: int = 1024 * 1024,
    ) -> None:
        self._send = send
        self._interval = interval
        self._batch = batch
        self._max_buffer = max_buffer
        self._max_batch_bytes = max_batch_bytes
        self._buffers: dict[UUID, _RunBuffer] = {}
        self._locks: dict[UUID, asyncio.Lock] = {}
        self._wake = asyncio.Event()

    def add(self, run_id: UUID, stream: str, line: str, level: str = "INFO") -> None:
        buffer = self._buffers.get(run_id)
        if buffer is None:
            buffer = self._buffers[run_id] = _RunBuffer()
        buffer.lines.append(
            LogLineCreate(timestamp=utcnow(), stream=LogStream(stream), level=level, line=line)
        )
        buffer.size += len(line) + LINE_OVERHEAD
        if len(buffer.lines) >= self._batch or buffer.size >= self._max_batch_bytes:
            self._wake.set()

    def room(self, run_id: UUID) -> asyncio.Future[None] | None:
        """None while ``run_id``'s buffer has room; else a future done once it has again."""
        buffer = self._buffers.get(run_id)
        if buffer is None or buffer.size < self._max_buffer:
            return None
        if buffer.room is None or buffer.room.done():
            buffer.room = asyncio.get_running_loop().create_future()
        self._wake.set()
        return buffer.room

    def sink_for(
        self, run_id: UUID, redact: Callable[[str, str], str] | None = None
    ) -> Callable[[str, str], None]:
        """The sink a runner hands ``run_id``'s output to; ``redact(stream, line)`` masks lines."""
        return _RunSink(self, run_id, redact)

    def buffered(self, run_id: UUID) -> int:
        """About how many bytes of ``run_id``'s output wait to be sent (for tests, metrics)."""
        buffer = self._buffers.get(run_id)
        return 0 if buffer is None else buffer.size

    async def flush(self, run_id: UUID) -> None:
        lock = self._locks.setdefault(run_id, asyncio.Lock())
        # One sender per run at a time keeps lines in order on the server. ``send`` (the
        # outbox) never loses a batch: what the server cannot take now is spooled to disk.
        async with lock:
            while (buffer := self._buffers.get(run_id)) is not None and buffer.lines:
                chunk = buffer.take(self._batch, self._max_batch_bytes)
                if buffer.size <= self._max_buffer // 2:
                    buffer.make_room()
                await self._send(run_id, chunk)

    def forget(self, run_id: UUID) -> None:
        buffer = self._buffers.pop(run_id, None)
        if buffer is not None:
            buffer.make_room()  # nobody may stay paused on a run that is gone
        self._locks.pop(run_id, None)

    async def run(self) -> None:
        """Side task: flush every run's buffer periodically."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()
            for run_id in [r for r, buffer in self._buffers.items() if buffer.lines]:
                await self.flush(run_id)


class _RunBuffer:
    """One run's lines waiting to be sent, their cost in bytes, and whoever waits for room."""

    def __init__(self) -> None:
        self.lines: deque[LogLineCreate] = deque()
        self.size = 0
        self.room: asyncio.Future[None] | None = None

    def take(self, most: int, most_bytes: int) -> list[LogLineCreate]:
        chunk: list[LogLineCreate] = []
        taken = 0
        while self.lines and len(chunk) < most and (not chunk or taken < most_bytes):
            line = self.lines.popleft()
            chunk.append(line)
            taken += len(line.line) + LINE_OVERHEAD
        self.size -= taken
        return chunk

    def make_room(self) -> None:
        if self.room is not None and not self.room.done():
            self.room.set_result(None)


class _RunSink:
    """A run's output sink (runners/base.py, OutputSink) that can ask its runner to wait."""

    def __init__(
        self, shipper: LogShipper, run_id: UUID, redact: Callable[[str, str], str] | None
    ) -> None:
        self._shipper = shipper
        self._run_id = run_id
        self._redact = redact

    def __call__(self, stream: str, line: str) -> None:
        if self._redact is not None:
            line = self._redact(stream, line)
        self._shipper.add(self._run_id, stream, line, "ERROR" if stream == "stderr" else "INFO")

    def room(self) -> asyncio.Future[None] | None:
        return self._shipper.room(self._run_id)
