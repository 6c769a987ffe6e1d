"""The Alembic migrations produce exactly the schema in agent/server/orm.py."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, text

from agent.server.db import create_sqlite_engine, migrate, reset_database
from agent.server.orm import Base
from agent.server.settings import database_path

pytestmark = pytest.mark.integration


def schema_diffs(engine: Engine) -> list[object]:
    with engine.connect() as connection:
        return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))


@pytest.fixture
def migrated(tmp_path: Path) -> Path:
    migrate(tmp_path)
    return tmp_path


def test_migrated_schema_matches_the_orm(migrated: Path) -> None:
    engine = create_sqlite_engine(database_path(migrated))
    try:
        assert schema_diffs(engine) == []
    finally:
        engine.dispose()


def test_the_comparison_would_notice_a_difference(migrated: Path) -> None:
    engine = create_sqlite_engine(database_path(migrated))
    try:
        with engine.begin() as connection:
            connection.execute(text("DROP INDEX ix_flow_runs_claim"))
            connection.execute(text("ALTER TABLE logs ADD COLUMN extra TEXT"))
        diffs = schema_diffs(engine)
    finally:
        engine.dispose()
    found = repr(diffs)
    assert "add_index" in found and "ix_flow_runs_claim" in found
    assert "remove_column" in found and "extra" in found


def test_migrate_is_idempotent_and_versioned(migrated: Path) -> None:
    migrate(migrated)
    with sqlite3.connect(database_path(migrated)) as connection:
        assert connection.execute("SELECT version_num FROM alembic_version").fetchall() == [
            ("0006",)
        ]
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_connections_get_the_sqlite_pragmas(migrated: Path) -> None:
    engine = create_sqlite_engine(database_path(migrated))
    try:
        with engine.connect() as connection:
            pragma = lambda name: connection.exec_driver_sql(f"PRAGMA {name}").scalar()  # noqa: E731
            assert pragma("journal_mode") == "wal"
            assert pragma("synchronous") == 1  # NORMAL
            assert pragma("busy_timeout") == 5000
            assert pragma("foreign_keys") == 1
    finally:
        engine.dispose()


def test_reset_empties_the_database_and_keeps_it_current(migrated: Path) -> None:
    with sqlite3.connect(database_path(migrated)) as connection:
        connection.execute(
            "INSERT INTO work_queues (id, name, tags, paused, created) "
            "VALUES ('00000000-0000-0000-0000-000000000001', 'q', '[]', 0, '2024-01-01')"
        )
        connection.execute("CREATE TABLE leftover (x INTEGER)")
    reset_database(migrated)
    with sqlite3.connect(database_path(migrated)) as connection:
        assert connection.execute("SELECT count(*) FROM work_queues").fetchone() == (0,)
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
    assert "leftover" not in tables
    engine = create_sqlite_engine(database_path(migrated))
    try:
        assert schema_diffs(engine) == []
    finally:
        engine.dispose()


def test_reset_works_on_a_fresh_home(tmp_path: Path) -> None:
    home = tmp_path / "new"
    reset_database(home)
    assert database_path(home).exists()
