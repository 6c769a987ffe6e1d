"""Moving a run's output from where it is read to its sink, with backpressure.

The agent's sink holds each run's lines until they are shipped, and holds at most so much of
them: past that, :func:`output_room` returns a future that is done once the shipper has caught
up. A runner that honours it stops reading the run's output meanwhile, so the run blocks on
write (as it does while no agent reads at all) instead of the agent buffering whatever the run
prints. Nothing is dropped: lines wait in the run's pipe (or Docker's log), not in the agent.

A sink without a ``room`` attribute (a test's list, a third-party wrapper) always has room.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import structlog

from runners.base import LINE_PIECE, OutputSink

log = structlog.get_logger(__name__)

#: How many of a run's last stderr lines its failure message quotes.
STDERR_CONTEXT_LINES = 5

#: At most this many characters of one run's output are on their way from a reader thread to
#: the event loop (Docker's log streams, in-process flows' threads).
IN_FLIGHT_CHARS = 256 * 1024


class Outlet:
    """Where a runner's lines go: its sink, with the last stderr lines kept for a failure's
    message. A sink that raises is logged once and then ignored: the run's output must keep
    draining whatever the sink does (a full pipe would block the run)."""

    def __init__(self, sink: OutputSink, **context: Any) -> None:
        self.sink = sink
        self.stderr_tail: deque[str] = deque(maxlen=STDERR_CONTEXT_LINES)
        self._context = context  # said with the failure: which pid, which container
        self._failed = False

    def __call__(self, stream: str, line: str) -> None:
        self.note(stream, line)
        self.deliver(stream, line)

    def note(self, stream: str, line: str) -> None:
        """Keep ``line`` for the failure message (where it is read, maybe another thread)."""
        if stream == "stderr":
            self.stderr_tail.append(line)

    def deliver(self, stream: str, line: str) -> None:
        """Hand ``line`` to the sink (on the event loop)."""
        try:
            self.sink(stream, line)
        except Exception:
            if not self._failed:
                self._failed = True
                log.exception("run_output_sink_failed", **self._context)


def cut_lines(text: str) -> tuple[list[str], str]:
    """``text``'s complete lines, those over ``LINE_PIECE`` characters cut into pieces, and the
    rest after its last newline (full pieces of it moved to the lines, so it stays bounded)."""
    *whole, rest = text.split("\n")
    lines = [
        line[i : i + LINE_PIECE] for line in whole for i in range(0, max(len(line), 1), LINE_PIECE)
    ]
    while len(rest) > LINE_PIECE:
        lines.append(rest[:LINE_PIECE])
        rest = rest[LINE_PIECE:]
    return lines, rest


def output_room(sink: OutputSink) -> asyncio.Future[None] | None:
    """None while ``sink`` can take more lines now; else a future done once it can again."""
    room: Callable[[], asyncio.Future[None] | None] | None = getattr(sink, "room", None)
    return None if room is None else room()


class ThreadHandoff:
    """Hands lines read in other threads to ``deliver`` on the event loop, a bounded amount at a
    time: :meth:`wait_for_room` blocks the reading thread while ``limit`` characters are on
    their way or the sink behind ``deliver`` is full."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        deliver: Callable[[str, str], None],
        sink: OutputSink,
        *,
        limit: int = IN_FLIGHT_CHARS,
        context: contextvars.Context | None = None,
    ) -> None:
        self._loop = loop
        self._deliver = deliver
        self._sink = sink
        self._limit = limit
        self._context = context
        self._cond = threading.Condition()
        self._in_flight = 0
        self._closed = False

    def wait_for_room(self) -> None:
        """Block until more may be put. Never blocks the loop's own thread (an async in-process
        flow prints there): the loop is what makes room."""
        if self._on_loop():
            return
        with self._cond:
            while self._in_flight >= self._limit and not self._closed:
                self._cond.wait()

    def put(self, stream: str, line: str) -> None:
        """Queue ``line`` for the loop, in order; call :meth:`wait_for_room` first to be paced."""
        size = len(line) + 1
        with self._cond:
            self._in_flight += size
        try:
            self._loop.call_soon_threadsafe(self._hand, stream, line, size, context=self._context)
        except RuntimeError:  # the loop is closed: the agent is exiting
            self._release(size)

    def close(self) -> None:
        """Let every waiting thread go (the run is over, or the agent is going away)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _on_loop(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def _hand(self, stream: str, line: str, size: int) -> None:
        try:
            self._deliver(stream, line)
        finally:
            room = output_room(self._sink)
            if room is None:
                self._release(size)
            else:
                room.add_done_callback(lambda _: self._release(size))

    def _release(self, size: int) -> None:
        with self._cond:
            self._in_flight -= size
            self._cond.notify_all()
