"""Where the server keeps uploaded bundles: in the database (``bundles``, ``bundle_chunks``), so
that every replica on one PostgreSQL serves every bundle, whichever received it.

Content-addressed: a bundle is named by the sha256 digest of its bytes, so the same upload twice
is one bundle, and an agent that downloads it can tell whether it got exactly that.

An upload is spooled to a temporary file first (size limit, digest, archive check) and only then
inserted, in ~1 MiB chunks, in one transaction: the database is never held while a slow client
sends its body, and a bundle row is never visible without all of its chunks. A download reads
one chunk per query, so neither side holds a whole bundle in memory.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any, cast

import anyio.to_thread
import structlog
from fastapi import HTTPException, status
from sqlalchemy import CursorResult, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from agent.errors import SourceError
from agent.models import Bundle, utcnow
from agent.server.db import Database
from agent.server.orm import BundleChunkRow, BundleRow
from agent.sources.bundle import DIGEST, check_archive

log = structlog.get_logger("agent.server.bundles")

#: Bytes per row of ``bundle_chunks``: large enough that a 100 MB bundle is ~100 rows, small
#: enough that a chunk is nothing in memory (and far below PostgreSQL's 1 GB bytea bound).
CHUNK_BYTES = 1 << 20


def check_digest(digest: str) -> str:
    """``digest`` if it is one (``sha256:<64 hex>``); a 422 otherwise."""
    if not DIGEST.match(digest):
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_ENTITY,
            f"{digest!r} is not a bundle digest (sha256:<64 hex digits>)",
        )
    return digest


def touch(session: Session, digest: str) -> bool:
    """Mark the bundle used now (garbage collection counts its retention from here); whether
    it exists. In a write session, so that it is atomic with the collector's deletes."""
    changed = session.execute(
        update(BundleRow).where(BundleRow.digest == digest).values(touched=utcnow())
    )
    return cast("CursorResult[Any]", changed).rowcount > 0


def _touch_existing(db: Database, digest: str) -> bool:
    # Behind the write lock, as the garbage collector deletes: a bundle found here is not
    # deleted before the uploader is told it is stored.
    with db.write() as session:
        return touch(session, digest)


def _insert(db: Database, digest: str, size: int, spool: IO[bytes]) -> None:
    """The bundle and all its chunks, in one transaction.

    On PostgreSQL without the database-wide write lock: inserting 100 MB takes a while and
    needs no lock but the row's own; a concurrent upload of the same bytes (another replica)
    waits on the primary key and then fails with a unique violation, which the caller reads
    as "stored already".
    """
    now = utcnow()
    with db.write(serialized=False) as session:
        session.add(BundleRow(digest=digest, size=size, created=now, touched=now))
        session.flush()
        spool.seek(0)
        seq = 0
        while data := spool.read(CHUNK_BYTES):
            session.execute(insert(BundleChunkRow).values(digest=digest, seq=seq, data=data))
            seq += 1


def store_file(db: Database, digest: str, size: int, spool: IO[bytes]) -> bool:
    """Store a checked archive of ``digest`` unless it is stored already; True when stored now.

    Idempotent under concurrent uploads of the same bytes, on one server or several.
    """
    if _touch_existing(db, digest):
        return False
    try:
        _insert(db, digest, size, spool)
    except IntegrityError:
        # Another upload (this replica or another) stored the same bytes first.
        if _touch_existing(db, digest):
            return False
        raise
    return True


def _size(db: Database, digest: str) -> int | None:
    with db.read() as session:
        return session.scalar(select(BundleRow.size).where(BundleRow.digest == digest))


def _chunk(db: Database, digest: str, seq: int) -> bytes | None:
    with db.read() as session:
        return session.scalar(
            select(BundleChunkRow.data).where(
                BundleChunkRow.digest == digest, BundleChunkRow.seq == seq
            )
        )


class BundleStore:
    def __init__(self, db: Database, home: Path, max_bytes: int) -> None:
        self.db = db
        self.home = home
        self.max_bytes = max_bytes

    def _too_large(self) -> HTTPException:
        return HTTPException(
            status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
            f"the bundle is larger than this server takes ({self.max_bytes:,} "
            "bytes, setting bundle_max_size); leave files out with "
            ".flowagentignore, or raise the server's limit",
        )

    async def put(self, chunks: AsyncIterator[bytes]) -> Bundle:
        """Store what ``chunks`` carry unless the same bytes are stored already."""
        # In AGENT_HOME, not /tmp: the server's home is sized for bundles, /tmp may be a small
        # tmpfs. A file with no name (O_TMPFILE on Linux): even a server killed mid-upload
        # leaves nothing behind to clean.
        with tempfile.TemporaryFile(dir=self.home) as spool:
            sha = hashlib.sha256()
            size = 0
            async for chunk in chunks:
                size += len(chunk)
                if size > self.max_bytes:
                    raise self._too_large()
                sha.update(chunk)
                spool.write(chunk)
            spool.flush()
            digest = "sha256:" + sha.hexdigest()
            # Stored already: it was checked when it was first stored; re-uploading an
            # unchanged directory (every `deployment create --upload`) costs no gunzip.
            if await self.db.run(_touch_existing, self.db, digest):
                return Bundle(digest=digest, size=size, created=False)
            try:
                # Gunzipping up to bundle_max_size takes seconds: off the event loop.
                await anyio.to_thread.run_sync(check_archive, spool)
            except SourceError as exc:
                raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, exc.message) from None
            created = await self.db.run(store_file, self.db, digest, size, spool)
        if created:
            log.info("bundle_stored", digest=digest, size=size)
        return Bundle(digest=digest, size=size, created=created)

    async def size(self, digest: str) -> int | None:
        """The stored bundle's size, or None when there is none of that digest."""
        return await self.db.run(_size, self.db, check_digest(digest))

    async def stream(self, digest: str) -> AsyncIterator[bytes]:
        """The bundle's bytes, one chunk per query (a short read each, no long snapshot)."""
        seq = 0
        while True:
            data = await self.db.run(_chunk, self.db, digest, seq)
            if data is None:
                return
            yield data
            seq += 1
