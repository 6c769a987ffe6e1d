"""Running blocking work in a thread of its own and awaiting it on the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def in_thread(
    fn: Callable[[], T], name: str, *, settle_in: contextvars.Context | None = None
) -> asyncio.Future[T]:
    """Run ``fn`` in a new daemon thread, in a copy of the current context; a future of it.

    Not the loop's default executor: that pool is small, and asyncio.run() joins it at exit, so
    one call that never returns (a flow, a hung dockerd) would keep the agent from exiting.
    ``settle_in`` is the context the future is settled in (default: the loop's own).
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()
    context = contextvars.copy_context()

    def target() -> None:
        try:
            value = context.run(fn)
        except BaseException as exc:  # everything goes back to the caller, SystemExit included
            settle = functools.partial(_settle_error, future, exc)
        else:
            settle = functools.partial(settle_result, future, value)
        with contextlib.suppress(RuntimeError):  # the loop is closed: the agent is exiting
            loop.call_soon_threadsafe(settle, context=settle_in)

    threading.Thread(target=target, name=name, daemon=True).start()
    return future


def settle_result(future: asyncio.Future[T], value: T) -> None:
    if not future.done():
        future.set_result(value)


def _settle_error(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
