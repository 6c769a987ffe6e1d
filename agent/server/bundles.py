"""Where the server keeps uploaded bundles: ``$AGENT_HOME/bundles/<sha256 hex>.tar.gz``.

Content-addressed: the file's name is the digest of its bytes, so the same upload twice is one
file, and an agent that downloads it can tell whether it got exactly that.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import HTTPException, status

from agent.errors import SourceError
from agent.models import Bundle
from agent.sources.bundle import DIGEST, check_archive


class BundleStore:
    def __init__(self, home: Path, max_bytes: int) -> None:
        self.directory = home / "bundles"
        self.max_bytes = max_bytes

    def path(self, digest: str) -> Path:
        if not DIGEST.match(digest):
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_ENTITY,
                f"{digest!r} is not a bundle digest (sha256:<64 hex digits>)",
            )
        return self.directory / f"{digest.removeprefix('sha256:')}.tar.gz"

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    async def put(self, chunks: AsyncIterator[bytes]) -> Bundle:
        """Store what ``chunks`` carry unless the same bytes are stored already."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        partial = self.directory / f".upload-{uuid.uuid4().hex}"
        sha = hashlib.sha256()
        size = 0
        try:
            with partial.open("wb") as file:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise HTTPException(
                            status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
                            f"the bundle is larger than this server takes ({self.max_bytes:,} "
                            "bytes, setting bundle_max_size); leave files out with "
                            ".flowagentignore, or raise the server's limit",
                        )
                    sha.update(chunk)
                    file.write(chunk)
            digest = "sha256:" + sha.hexdigest()
            try:
                check_archive(partial)
            except SourceError as exc:
                raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, exc.message) from None
            final = self.path(digest)
            if final.exists():
                return Bundle(digest=digest, size=size, created=False)
            os.replace(partial, final)  # atomic: a reader sees all of it or nothing
            return Bundle(digest=digest, size=size, created=True)
        finally:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
