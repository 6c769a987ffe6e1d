"""Extracted trees kept in the host's cache: one commit or bundle unpacked once, copied per run.

Unpacking a commit (``git archive``) or a bundle (sha256, gunzip, untar) at every run start costs
a process or a hash of the whole archive; copying a small tree of files costs neither. A tree is
built once under an exclusive ``flock`` (agents on a host share it) in a partial directory,
made read-only, renamed into place, and only then given its manifest: a tree without a manifest
is incomplete (an agent died while building it) and is built again.

Each run gets its own **copy** (never hard links: a run writing a file would change the shared
tree). The manifest records every entry's type, size, mode, inode, mtime and ctime as they were
when the tree was sealed; the copy compares each entry's ``lstat`` with it and reports a tree
changed on disk, which the caller then builds again from its verified origin. ctime cannot be set
through the filesystem, so any change made through it (a write, chmod, rename, a file added or
removed) is caught at the next copy. Bits flipped by a failing disk under an unchanged inode are
not: that would need a hash of every byte per run, the cost this cache exists to avoid.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import stat
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from agent.errors import SourceError
from agent.sources.locks import locked

log = structlog.get_logger("agent.sources")

#: Building a tree that takes longer is given up (a huge repository on a slow disk).
BUILD_TIMEOUT_SECONDS = 300.0
_PARTIAL = ".partial"


@dataclass(frozen=True)
class Manifest:
    """A sealed tree: what its entries were (relative path → stat fields) and where it came
    from (the caller's ``origin``, compared when it is used)."""

    entries: dict[str, list[int]]
    origin: Any = None

    def as_json(self) -> str:
        return json.dumps({"entries": self.entries, "origin": self.origin}, sort_keys=True)


def _fields(st: os.stat_result) -> list[int]:
    return [
        stat.S_IFMT(st.st_mode),
        stat.S_IMODE(st.st_mode),
        st.st_size,
        st.st_ino,
        st.st_mtime_ns,
        st.st_ctime_ns,
    ]


def _walk(root: Path) -> list[tuple[str, os.DirEntry[str]]]:
    """Every entry under ``root``, parents before children; links are not followed."""
    found: list[tuple[str, os.DirEntry[str]]] = []
    pending = [""]
    while pending:
        rel = pending.pop()
        with os.scandir(root / rel) as entries:
            for entry in entries:
                name = f"{rel}/{entry.name}" if rel else entry.name
                found.append((name, entry))
                if entry.is_dir(follow_symlinks=False):
                    pending.append(name)
    return found


def _seal(root: Path) -> dict[str, list[int]]:
    """Make the tree read-only (files 0444/0555, directories 0555) and record its entries."""
    walked = _walk(root)
    # Children first: a directory made read-only cannot have its entries changed after.
    for _, entry in reversed(walked):
        if entry.is_symlink():
            continue  # chmod would follow it, wherever it points
        mode = stat.S_IMODE(entry.stat(follow_symlinks=False).st_mode)
        os.chmod(entry.path, 0o555 if entry.is_dir() or mode & 0o100 else 0o444)
    return {rel: _fields(os.lstat(entry.path)) for rel, entry in walked}


def _copy(root: Path, entries: dict[str, list[int]], target: Path) -> bool:
    """Copy the sealed tree at ``root`` into ``target`` (made here), writable for the run;
    False when an entry differs from the manifest (the tree changed on disk)."""
    # Readable by anyone: a container may run the flow as any user (runners/docker.py).
    target.mkdir(parents=True)
    os.chmod(target, 0o755)
    for rel in sorted(entries):  # a directory sorts before its entries
        source, dest = root / rel, target / rel
        try:
            st = os.lstat(source)
        except FileNotFoundError:
            return False
        if _fields(st) != entries[rel]:
            return False
        if stat.S_ISDIR(st.st_mode):
            os.mkdir(dest)
            os.chmod(dest, 0o755)  # whatever the umask: a container may run as any user
        elif stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(source), dest)
        else:
            # copyfile uses copy_file_range/sendfile: the bytes never come up to Python.
            shutil.copyfile(source, dest, follow_symlinks=False)
            os.chmod(dest, 0o755 if st.st_mode & 0o100 else 0o644)
    return True


def remove_tree(path: Path) -> None:
    """``rm -r`` of a sealed tree: its directories are read-only, so made writable first."""
    if not path.exists():
        return
    with contextlib.suppress(OSError):
        os.chmod(path, 0o755)
    with contextlib.suppress(OSError):
        for _, entry in _walk(path):
            if entry.is_dir(follow_symlinks=False):
                with contextlib.suppress(OSError):
                    os.chmod(entry.path, 0o755)
    shutil.rmtree(path, ignore_errors=True)


class Trees:
    """Sealed trees under one directory, each named by what it holds (a commit, a digest)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, name: str) -> Path:
        return self.directory / name

    def _manifest_path(self, name: str) -> Path:
        return self.directory / f"{name}.manifest"

    def read(self, name: str) -> Manifest | None:
        """The tree's manifest; None while it is not (completely) built."""
        try:
            data = json.loads(self._manifest_path(name).read_text())
            return Manifest(dict(data["entries"]), data.get("origin"))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def names(self) -> list[str]:
        found = []
        with contextlib.suppress(FileNotFoundError):
            for entry in self.directory.iterdir():
                if entry.suffix == ".manifest":
                    found.append(entry.stem)
        return sorted(found)

    async def build(
        self,
        name: str,
        fill: Callable[[Path], None],
        origin: Any = None,
        *,
        stale: Manifest | None = None,
    ) -> Manifest:
        """The sealed tree ``name``, built by ``fill(directory)`` unless another agent built it
        (from the same ``origin``) while we waited. ``stale``: a manifest found not to match the
        tree on disk; it is built again unless someone already has."""
        async with locked(self.directory / f"{name}.lock"):
            found = self.read(name)
            if found is not None and found.origin == origin and found != stale:
                return found
            await asyncio.to_thread(self.discard, name)  # off the loop: a tree may be large
            partial = self.directory / f"{name}.{uuid.uuid4().hex[:8]}{_PARTIAL}"
            partial.mkdir(mode=0o755)
            try:
                entries = await asyncio.wait_for(
                    asyncio.to_thread(self._fill, fill, partial), BUILD_TIMEOUT_SECONDS
                )
                os.rename(partial, self.path(name))
            except BaseException:
                await asyncio.to_thread(remove_tree, partial)
                raise
            manifest = Manifest(entries, origin)
            # Written last, atomically: its presence says the tree is complete.
            staged = self.directory / f".{name}.manifest.{os.getpid()}"
            staged.write_text(manifest.as_json())
            os.replace(staged, self._manifest_path(name))
            log.info("source_tree_built", tree=str(self.path(name)), entries=len(entries))
            return manifest

    @staticmethod
    def _fill(fill: Callable[[Path], None], partial: Path) -> dict[str, list[int]]:
        fill(partial)
        return _seal(partial)

    def discard(self, name: str) -> None:
        """Remove the tree (and any partial one an agent died building); call under its lock,
        or with no run reading it."""
        self._manifest_path(name).unlink(missing_ok=True)
        remove_tree(self.path(name))
        for partial in self.directory.glob(f"{name}.*{_PARTIAL}"):
            remove_tree(partial)

    async def copy(
        self, name: str, manifest: Manifest, target: Path, *, touch: bool = True
    ) -> bool:
        """Copy the tree into ``target`` (created here); False, with ``target`` removed, when
        the tree no longer matches its manifest. ``touch``: mark the tree used now."""
        copying = asyncio.ensure_future(
            asyncio.to_thread(_copy, self.path(name), manifest.entries, target)
        )
        try:
            # Cancelled (the run, the agent stopping): the thread still ends its copy, and
            # only then can the copy be removed.
            copied = await asyncio.shield(copying)
        except FileNotFoundError:  # removed under us: it was found changed and is being rebuilt
            copied = False
        except OSError as exc:
            await asyncio.to_thread(shutil.rmtree, target, True)
            raise SourceError(f"cannot copy the cached tree {self.path(name)}: {exc}") from exc
        except BaseException:
            with contextlib.suppress(BaseException):
                await copying
            shutil.rmtree(target, ignore_errors=True)
            raise
        if not copied:
            await asyncio.to_thread(shutil.rmtree, target, True)
            return False
        if touch:
            with contextlib.suppress(OSError):
                os.utime(self.path(name))  # used now: pruning goes by this
        return True
