"""Bundles in the database on a real SQLite file, with a clock moved by hand: what the garbage
collector keeps and deletes, storing the same bytes twice (also from two threads at once), and
the import of bundles an older version left on disk. No server, no sleeping."""

from __future__ import annotations

import hashlib
import io
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from agent.models import StateType
from agent.server.bundle_upkeep import collect_garbage, collect_interval, import_from_disk
from agent.server.bundles import CHUNK_BYTES, store_file
from agent.server.db import Database, migrate
from agent.server.lifecycle import new_run
from agent.server.orm import BundleChunkRow, BundleRow, DeploymentRow
from agent.server.settings import database_path
from tests.unit.server_rows import add_deployment

DAY = 86400.0


@pytest.fixture
def home(tmp_path: Path) -> Path:
    migrate(tmp_path)
    return tmp_path


@pytest.fixture
def db(home: Path) -> Iterator[Database]:
    database = Database(database_path(home))
    yield database
    database.dispose()


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def put(db: Database, data: bytes) -> str:
    digest = digest_of(data)
    store_file(db, digest, len(data), io.BytesIO(data))
    return digest


def stored(db: Database) -> set[str]:
    with db.read() as session:
        return set(session.scalars(select(BundleRow.digest)))


def chunk_count(db: Database, digest: str) -> int:
    with db.read() as session:
        count = session.scalar(
            select(func.count()).select_from(BundleChunkRow).where(BundleChunkRow.digest == digest)
        )
        return int(count or 0)


def deployment(db: Database, source: dict[str, Any] | None) -> DeploymentRow:
    with db.write() as session:
        return add_deployment(
            session, datetime.now(UTC), entrypoint="flow.py:main", command=None, source=source
        )


def run_of(db: Database, row: DeploymentRow, state: StateType, bundle: str) -> None:
    with db.write() as session:
        run = new_run(
            session,
            session.get_one(DeploymentRow, row.id),
            parameters={},
            tags=[],
            env={},
            expected_start_time=datetime.now(UTC),
        )
        run.state_type = state.value
        run.source = {"bundle": bundle}


def later(days: float) -> datetime:
    return datetime.now(UTC) + timedelta(days=days)


def test_only_old_bundles_nothing_names_are_deleted_with_their_chunks(db: Database) -> None:
    loose = put(db, b"loose" * CHUNK_BYTES)  # five chunks
    named = put(db, b"named")
    running = put(db, b"running")
    finished = put(db, b"finished")
    deployment(db, {"bundle": named})
    other = deployment(db, None)  # no source, and a git one: neither names a bundle
    deployment(db, {"git": "https://example.com/r.git", "ref": "main"})
    run_of(db, other, StateType.RUNNING, running)
    run_of(db, other, StateType.COMPLETED, finished)
    assert chunk_count(db, loose) == 5

    assert collect_garbage(db, 7 * DAY, later(6)) == []  # nothing is old enough yet
    deleted = collect_garbage(db, 7 * DAY, later(8))

    assert sorted(deleted) == sorted([loose, finished])
    assert stored(db) == {named, running}
    assert chunk_count(db, loose) == 0 and chunk_count(db, named) == 1


def touched(db: Database, digest: str) -> datetime:
    with db.read() as session:
        return session.get_one(BundleRow, digest).touched


def test_uploading_or_naming_a_bundle_again_restarts_its_retention(db: Database) -> None:
    data = b"again"
    digest = put(db, data)
    first = touched(db, digest)
    assert store_file(db, digest, len(data), io.BytesIO(data)) is False  # uploaded again
    second = touched(db, digest)
    assert second > first
    row = deployment(db, {"bundle": digest})
    with db.write() as session:  # the deployment is deleted: only the retention is left
        session.delete(session.get_one(DeploymentRow, row.id))
    assert collect_garbage(db, 7 * DAY, second + timedelta(days=6)) == []
    assert collect_garbage(db, 7 * DAY, second + timedelta(days=7, seconds=1)) == [digest]


def test_the_same_bytes_are_stored_once_even_from_two_threads_at_once(db: Database) -> None:
    data = bytes(range(256)) * (3 * CHUNK_BYTES // 256 + 7)
    digest = digest_of(data)
    start = threading.Barrier(4)
    created: list[bool] = []

    def upload() -> None:
        start.wait()
        created.append(store_file(db, digest, len(data), io.BytesIO(data)))

    threads = [threading.Thread(target=upload) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(created) == [False, False, False, True]
    assert chunk_count(db, digest) == 4
    with db.read() as session:
        chunks = session.scalars(
            select(BundleChunkRow.data)
            .where(BundleChunkRow.digest == digest)
            .order_by(BundleChunkRow.seq)
        )
        assert b"".join(chunks) == data


def test_only_files_that_match_their_digest_are_imported(home: Path, db: Database) -> None:
    old = home / "bundles"
    old.mkdir()
    good = b"a bundle an older server stored"
    (old / f"{digest_of(good)[7:]}.tar.gz").write_bytes(good)
    (old / f"{'0' * 64}.tar.gz").write_bytes(b"not what its name says")
    (old / "notes.tar.gz").write_bytes(b"not named by a digest")
    (old / ".upload-0123").write_bytes(b"an upload a crash cut short")

    assert import_from_disk(db, home) == 1
    assert stored(db) == {digest_of(good)}
    assert sorted(p.name for p in old.iterdir()) == [f"{'0' * 64}.tar.gz", "notes.tar.gz"]
    assert import_from_disk(db, home) == 0


def test_an_emptied_directory_is_removed(home: Path, db: Database) -> None:
    old = home / "bundles"
    old.mkdir()
    (old / f"{digest_of(b'x')[7:]}.tar.gz").write_bytes(b"x")
    assert import_from_disk(db, home) == 1
    assert not old.exists()


@pytest.mark.parametrize(
    ("retention", "interval"), [(7 * DAY, 600.0), (60.0, 6.0), (2.0, 1.0), (0.5, 1.0)]
)
def test_collection_runs_a_tenth_of_the_retention_apart_within_bounds(
    retention: float, interval: float
) -> None:
    assert collect_interval(retention) == interval
