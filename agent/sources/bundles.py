"""The host's cache of bundles: ``$AGENT_HOME/sources/bundles/<hex>.tar.gz``, one per digest.

Downloaded once per digest under a file lock (agents on a host share it) and checked against
the digest whenever a tree is unpacked from it (trees.py: ``trees/bundles/<hex>/``): a cached
file changed on disk (tampering, a bad disk) is detected, thrown away and downloaded again,
never run. Between unpackings a run reads the tree, not the archive; the tree remembers the
archive's ``stat`` (size, inode, mtime, ctime) when its digest was checked, and an archive whose
``stat`` has changed since is checked again (and its tree built again) before any run uses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog

from agent.errors import SourceError
from agent.sources.bundle import digest_of, file_digest
from agent.sources.locks import locked
from agent.sources.trees import Trees

log = structlog.get_logger("agent.sources")


class BundleCache:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.trees = Trees(directory.parent / "trees" / "bundles")

    def path(self, digest: str) -> Path:
        return self.directory / f"{self.name(digest)}.tar.gz"

    @staticmethod
    def name(digest: str) -> str:
        return digest.removeprefix("sha256:")

    def fingerprint(self, digest: str) -> list[int] | None:
        """The archive's identity on disk: any write, replacement or chmod changes it (ctime
        cannot be set back through the filesystem). None when it is not there."""
        try:
            st = self.path(digest).stat()
        except FileNotFoundError:
            return None
        return [st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns]

    def _locked(self, digest: str) -> contextlib.AbstractAsyncContextManager[None]:
        return locked(self.directory / f"{digest.removeprefix('sha256:')}.lock")

    def in_use(self, digest: str) -> contextlib.AbstractAsyncContextManager[None]:
        """Held (shared) while a run unpacks it: prune leaves it alone."""
        return locked(self.directory / f"{digest.removeprefix('sha256:')}.use", shared=True)

    async def get(self, digest: str, download: Callable[[], Awaitable[bytes]]) -> Path:
        """The cached archive of ``digest``, verified; downloaded when missing or damaged."""
        path = self.path(digest)
        async with self._locked(digest):
            if path.is_file():
                found = await asyncio.to_thread(file_digest, path)
                if found == digest:
                    os.utime(path)  # used now: pruning goes by this
                    return path
                log.warning("bundle_cache_damaged", digest=digest, found=found)
                path.unlink()
            data = await download()
            got = digest_of(data)
            if got != digest:
                raise SourceError(
                    f"bundle {digest} downloaded from the server does not match its digest "
                    f"(got {got}); not run",
                    hint="upload the directory again (agent deployment create --upload DIR)",
                )
            partial = path.with_name(f".{path.name}.{os.getpid()}")
            partial.write_bytes(data)
            os.replace(partial, path)
            log.info("bundle_downloaded", digest=digest, size=len(data))
            return path
