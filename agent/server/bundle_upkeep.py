"""Keeping the server's bundles: importing those an older version left on its disk, and deleting
those nothing needs any more.

Import (at every start, before serving): ``$AGENT_HOME/bundles/<hex>.tar.gz`` files, where
versions before the bundles table kept them, are checked against the digest their name gives
and stored in the database; a file is removed once its bundle is stored (the database holds it
now, and a file left there would be hashed again at every start). A file whose content does
not match its name is left where it is and logged, never imported. Each replica imports its own
directory: a bundle that only one replica's disk had is then served by all.

Garbage collection (on the leader, every ``bundle_retention / 10``, between 1 s and 10 min): a
bundle is deleted when no deployment names it, no unfinished run (not COMPLETED, FAILED,
CRASHED or CANCELLED) records it as its source, and it was last uploaded or named by a
deployment more than ``bundle_retention`` ago. The retention is what protects a run claimed
from a deployment that was just deleted or changed to another bundle, whose agent has not
downloaded it yet: such a run names no bundle until it starts.
"""

from __future__ import annotations

import contextlib
import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast

import anyio
import structlog
from sqlalchemy import CursorResult, delete, select
from sqlalchemy.orm import Session

from agent.models import TERMINAL_STATES, StateType, utcnow
from agent.server.bundles import store_file
from agent.server.db import Database
from agent.server.orm import BundleChunkRow, BundleRow, DeploymentRow, FlowRunRow
from agent.sources.bundle import DIGEST, file_digest

log = structlog.get_logger("agent.server.bundles")

# Bundles deleted per write transaction: the write lock is held for a bounded time.
_BATCH = 10
_UNFINISHED = [state.value for state in StateType if state not in TERMINAL_STATES]


# --------------------------------------------------------------------------- import


def import_from_disk(db: Database, home: Path) -> int:
    """Store the bundles an older server left in ``home/bundles``; how many were stored."""
    directory = home / "bundles"
    if not directory.is_dir():
        return 0
    imported = 0
    for path in sorted(directory.glob("*.tar.gz")):
        digest = "sha256:" + path.name.removesuffix(".tar.gz")
        if not DIGEST.match(digest):
            log.warning("bundle_import_skipped", file=str(path), reason="not named by a digest")
            continue
        try:
            found = file_digest(path)
            if found != digest:
                log.warning("bundle_import_skipped", file=str(path), reason="damaged", found=found)
                continue
            with path.open("rb") as spool:
                size = os.fstat(spool.fileno()).st_size
                created = store_file(db, digest, size, spool)
            path.unlink()
        except FileNotFoundError:  # another server process on this home imported it first
            continue
        imported += 1
        log.info("bundle_imported", digest=digest, size=size, created=created)
    # What an upload cut short by a crash left of the old store: never a bundle.
    for partial in directory.glob(".upload-*"):
        partial.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # not empty: a file we did not import stays, and says so
        directory.rmdir()
    return imported


# --------------------------------------------------------------------------- collection


def _bundle_of(source: Any) -> str | None:
    if isinstance(source, dict) and isinstance(source.get("bundle"), str):
        return str(source["bundle"])
    return None


def _in_use(session: Session) -> set[str]:
    """Every bundle a deployment or an unfinished run names."""
    used = {_bundle_of(source) for source in session.scalars(select(DeploymentRow.source))}
    used |= {
        _bundle_of(source)
        for source in session.scalars(
            select(FlowRunRow.source).where(FlowRunRow.state_type.in_(_UNFINISHED))
        )
    }
    return {digest for digest in used if digest is not None}


def collect_garbage(db: Database, retention_seconds: float, now: datetime) -> list[str]:
    """Delete the bundles nothing names that were not used for ``retention_seconds``."""
    cutoff = now - timedelta(seconds=retention_seconds)
    with db.read() as session:  # the common case, nothing old, takes no write lock
        old = list(session.scalars(select(BundleRow.digest).where(BundleRow.touched < cutoff)))
    deleted: list[str] = []
    for start in range(0, len(old), _BATCH):
        # Behind the write lock: a deployment naming a bundle, and an upload finding it stored,
        # touch it in write transactions too, so neither sees a bundle this is deleting.
        with db.write() as session:
            used = _in_use(session)
            for digest in old[start : start + _BATCH]:
                if digest in used:
                    continue
                gone = session.execute(
                    delete(BundleRow).where(BundleRow.digest == digest, BundleRow.touched < cutoff)
                )
                if cast("CursorResult[Any]", gone).rowcount:
                    session.execute(delete(BundleChunkRow).where(BundleChunkRow.digest == digest))
                    deleted.append(digest)
    return deleted


def collect_interval(retention_seconds: float) -> float:
    """Seconds between two collections: a tenth of the retention, from 1 s to 10 min."""
    return min(600.0, max(1.0, retention_seconds / 10))


async def bundle_collector(db: Database, retention_seconds: float) -> None:
    """Background task of the leader: collect garbage now and every :func:`collect_interval`."""
    interval = collect_interval(retention_seconds)
    while True:
        try:
            deleted = await db.run(collect_garbage, db, retention_seconds, utcnow())
        except Exception:  # a busy database now and then must not end collection
            log.exception("bundle_collection_failed", retry_in=interval)
        else:
            for digest in deleted:
                log.info("bundle_deleted", digest=digest, reason="unused past bundle_retention")
        await anyio.sleep(interval)
