"""Coalescing many concurrent calls into one request, without delaying a lone call.

An agent with a hundred short runs makes a state report every few milliseconds. Sent one by
one, each costs a request on both sides and a write transaction on the server (serialised by
SQLite), and that, not the runs, caps the throughput. A :class:`Coalescer` sends a call at once
when fewer than ``concurrency`` requests are in flight; otherwise the call waits in a queue, and
the next free sender takes everything queued as one batch. So an idle agent pays no latency,
and a busy one sends fewer, larger requests: the busier, the larger.

Each caller gets its own item's result or exception, as if it had made the call alone; when the
whole request fails (server unreachable after retries, credentials refused), every caller in
that batch gets that exception and decides for itself (the outbox spools its report).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class Coalescer(Generic[Item, Result]):
    """Sends items alone while the line is free, in batches (FIFO) while it is busy."""

    def __init__(
        self,
        send_one: Callable[[Item], Awaitable[Result]],
        send_many: Callable[[Sequence[Item]], Awaitable[Sequence[Result | BaseException]]],
        *,
        concurrency: int = 2,
        max_batch: int = 200,
    ) -> None:
        self._send_one = send_one
        self._send_many = send_many
        self._concurrency = concurrency
        self._max_batch = max_batch
        self._queue: deque[tuple[Item, asyncio.Future[Result]]] = deque()
        self._senders = 0
        # The event loop keeps only weak references to tasks: these must not vanish mid-send.
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches_sent = 0  # batches of two or more, for tests and metrics

    async def submit(self, item: Item) -> Result:
        if self._senders < self._concurrency and not self._queue:
            # The line is free: this call goes out now, on its caller's task, as before.
            self._senders += 1
            try:
                return await self._send_one(item)
            finally:
                self._senders -= 1
                self._start_sender()
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        self._start_sender()
        return await future

    def _start_sender(self) -> None:
        if self._queue and self._senders < self._concurrency:
            self._senders += 1
            task = asyncio.get_running_loop().create_task(self._drain(), name="coalescer-send")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch: list[tuple[Item, asyncio.Future[Result]]] = []
                while self._queue and len(batch) < self._max_batch:
                    item, future = self._queue.popleft()
                    if not future.done():  # a caller that gave up (cancelled) sends nothing
                        batch.append((item, future))
                if batch:
                    await self._send(batch)
        finally:
            self._senders -= 1
            self._start_sender()

    async def _send(self, batch: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        try:
            if len(batch) == 1:
                outcomes: Sequence[Result | BaseException] = [await self._send_one(batch[0][0])]
            else:
                self.batches_sent += 1
                outcomes = await self._send_many([item for item, _ in batch])
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:  # the whole request failed: every caller in it hears why
            outcomes = [exc] * len(batch)
        if len(outcomes) != len(batch):  # pragma: no cover - a server bug, not a network state
            error = RuntimeError(f"{len(outcomes)} results for a batch of {len(batch)}")
            outcomes = [error] * len(batch)
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if future.done():
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

    async def aclose(self) -> None:
        """Stop sending: callers still waiting are cancelled (the client is closing)."""
        while self._queue:
            self._queue.popleft()[1].cancel()
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
