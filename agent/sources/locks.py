"""File locks shared by the agents of a host (and `agent sources prune`).

Each cached source has two: ``.lock`` (exclusive) while it is created or fetched, and ``.use``
(shared) while a run reads it, which ``prune`` takes exclusively without waiting, so it never
removes what a run is reading. Polled rather than blocking: a cancelled run stops waiting at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

POLL_SECONDS = 0.02


def _open(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


@contextlib.asynccontextmanager
async def locked(path: Path, *, shared: bool = False) -> AsyncIterator[None]:
    fd = _open(path)
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    try:
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await asyncio.sleep(POLL_SECONDS)
        yield
    finally:
        os.close(fd)  # closing releases the lock


@contextlib.contextmanager
def unless_in_use(path: Path) -> Iterator[bool]:
    """Hold ``path`` exclusively if no one holds it now; yields False (and waits for nothing)
    when someone does."""
    fd = _open(path)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)
