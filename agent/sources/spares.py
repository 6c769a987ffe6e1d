"""Copies of cached trees made before the run that takes them: a run start renames, not copies.

Copying a tree makes every one of its files, and making a file is what a busy disk is slowest
at (about half a millisecond each on a loaded VM's ext4): tens of milliseconds of pickup for a
small project. So after a run takes a copy of a tree, the agent makes the next one in the
background, a moment later (not to compete with that run's own start), in
``agents/<name>/spares/``; the next run of the same tree renames it into its checkout. A spare is
a verified copy (trees.py), made from the tree as its manifest says; it is used only while that
manifest is still the tree's, and it is the agent's own (as its checkouts are), so no other run
has ever seen it. At most ``KEEP`` trees have a spare; a spare left by a dead life of the agent
is removed when it starts again.

Making a spare is best-effort: a failure (the tree pruned or changed meanwhile, a full disk) is
logged and the next run copies the tree itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import uuid
from collections import OrderedDict
from pathlib import Path

import structlog

from agent.sources.trees import Manifest, Trees

log = structlog.get_logger("agent.sources")

#: Trees with a spare copy ready, at most (the least recently used one goes first).
KEEP = 4
#: How long after a run took a copy the next one is made: after that run's flow has begun to
#: start (a process spawn, imports), so that the two do not compete for the disk.
DELAY_SECONDS = 0.3

_Key = tuple[Path, str]


class Spares:
    """One agent's spare copies, one per tree it ran lately."""

    def __init__(self, directory: Path, keep: int = KEEP, delay: float = DELAY_SECONDS) -> None:
        self.directory = directory
        self._keep = keep
        self._delay = delay
        self._ready: OrderedDict[_Key, tuple[Path, Manifest]] = OrderedDict()
        self._making: dict[_Key, asyncio.Task[None]] = {}

    def clear(self) -> None:
        """Remove every spare on disk (at start-up: a dead life's are unknown to this one)."""
        self._ready.clear()
        shutil.rmtree(self.directory, ignore_errors=True)

    async def take(self, trees: Trees, name: str, manifest: Manifest, target: Path) -> bool:
        """Move the spare of tree ``name`` to ``target`` (which must not exist) when there is
        one made from ``manifest``; False when there is none."""
        found = self._ready.pop((trees.directory, name), None)
        if found is None:
            return False
        path, made_from = found
        if made_from != manifest:  # the tree was built again since: the spare is of old files
            await asyncio.to_thread(shutil.rmtree, path, True)
            return False
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.rename(path, target)
        except OSError as exc:
            log.warning("source_spare_lost", spare=str(path), error=str(exc))
            await asyncio.to_thread(shutil.rmtree, path, True)
            return False
        with contextlib.suppress(OSError):
            os.utime(trees.path(name))  # used now, as a copy would have marked it
        return True

    def refill(self, trees: Trees, name: str, manifest: Manifest) -> None:
        """Make the next spare of tree ``name`` in the background, unless one is on its way."""
        key = (trees.directory, name)
        if key in self._ready or key in self._making:
            return
        task = asyncio.create_task(
            self._make(key, trees, name, manifest), name=f"source-spare-{name[:12]}"
        )
        self._making[key] = task
        task.add_done_callback(lambda _: self._making.pop(key, None))

    async def _make(self, key: _Key, trees: Trees, name: str, manifest: Manifest) -> None:
        await asyncio.sleep(self._delay)
        path = self.directory / uuid.uuid4().hex
        try:
            made = await trees.copy(name, manifest, path, touch=False)
        except Exception as exc:  # best-effort: the next run copies the tree itself
            log.warning("source_spare_failed", tree=str(trees.path(name)), error=str(exc))
            return
        if not made:
            return  # the tree changed or went: the next run finds out and copes
        self._ready[key] = (path, manifest)
        while len(self._ready) > self._keep:
            _, (old, _) = self._ready.popitem(last=False)
            await asyncio.to_thread(shutil.rmtree, old, True)

    async def close(self) -> None:
        """Stop making spares and remove them all (the agent is stopping)."""
        tasks = list(self._making.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.to_thread(self.clear)
