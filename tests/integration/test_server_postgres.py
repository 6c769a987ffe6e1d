"""The server on a real PostgreSQL: the same migrations make the ORM's schema, `agent database
upgrade|reset` work on it, and a database that is down, a wrong URL or a newer schema is one
clear line and a non-zero exit, before the server listens."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, create_engine, text

from agent.server.engines import parse_database_url
from agent.server.orm import Base
from agent.server.schema import head_revision, migrate
from tests.postgres import PostgresCluster
from tests.support import (
    AGENT,
    base_env,
    free_port,
    make_deployment,
    make_queue,
    make_run,
    running_server,
    wait_for,
)

pytestmark = pytest.mark.integration


def engine(url: str) -> Engine:
    return create_engine(parse_database_url(url))


def schema_diffs(url: str) -> list[object]:
    eng = engine(url)
    try:
        with eng.connect() as connection:
            return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))
    finally:
        eng.dispose()


def scalar(url: str, sql: str) -> object:
    eng = engine(url)
    try:
        with eng.begin() as connection:
            result = connection.execute(text(sql))
            return result.scalar() if result.returns_rows else None
    finally:
        eng.dispose()


def agent_cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [AGENT, *args], env=base_env(home), capture_output=True, text=True, timeout=60
    )


def test_migrations_make_the_orm_schema_on_postgres(tmp_path: Path, postgres_url: str) -> None:
    assert migrate(tmp_path, parse_database_url(postgres_url)) == head_revision()
    assert schema_diffs(postgres_url) == []
    # Again: nothing to do, same revision, no error.
    assert migrate(tmp_path, parse_database_url(postgres_url)) == head_revision()
    assert not (tmp_path / "flowagent.db").exists()


def test_the_comparison_would_notice_a_difference(tmp_path: Path, postgres_url: str) -> None:
    migrate(tmp_path, parse_database_url(postgres_url))
    eng = engine(postgres_url)
    try:
        with eng.begin() as connection:
            connection.execute(text("DROP INDEX ix_flow_runs_claim"))
            connection.execute(text("ALTER TABLE logs ADD COLUMN extra TEXT"))
    finally:
        eng.dispose()
    found = repr(schema_diffs(postgres_url))
    assert "add_index" in found and "ix_flow_runs_claim" in found
    assert "remove_column" in found and "extra" in found


def test_cli_upgrade_and_reset_on_postgres(tmp_path: Path, postgres_url: str) -> None:
    upgraded = agent_cli(tmp_path, "database", "upgrade", "--database-url", postgres_url)
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"schema revision {head_revision()}" in upgraded.stdout
    scalar(
        postgres_url,
        "INSERT INTO work_queues (id, name, tags, paused, created) "
        "VALUES ('00000000-0000-0000-0000-000000000001', 'q', '[]', false, now())",
    )
    scalar(postgres_url, "CREATE TABLE leftover (x integer)")
    reset = agent_cli(tmp_path, "database", "reset", "--yes", "--database-url", postgres_url)
    assert reset.returncode == 0, reset.stderr
    assert "password" not in reset.stdout
    assert scalar(postgres_url, "SELECT count(*) FROM work_queues") == 0
    assert scalar(postgres_url, "SELECT to_regclass('leftover') IS NULL") is True
    assert scalar(postgres_url, "SELECT version_num FROM alembic_version") == head_revision()
    assert schema_diffs(postgres_url) == []


def start_fails(home: Path, url: str) -> str:
    """`agent server start` on ``url`` exits non-zero with one error line and no traceback;
    that line."""
    done = subprocess.run(
        [AGENT, "server", "start", "--port", str(free_port()), "--database-url", url],
        env=base_env(home),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    return errors[0]


def test_a_database_that_is_down_is_one_clear_line(tmp_path: Path) -> None:
    line = start_fails(tmp_path, f"postgresql+psycopg://u:hunter2@127.0.0.1:{free_port()}/db")
    assert "cannot use the database at postgresql+psycopg://u:***@127.0.0.1" in line
    assert "hunter2" not in line


def test_a_wrong_url_is_one_clear_line(tmp_path: Path) -> None:
    line = start_fails(tmp_path, "mysql://u@127.0.0.1/db")
    assert "database_url" in line


def test_a_missing_database_is_one_clear_line(
    tmp_path: Path, postgres_cluster: PostgresCluster
) -> None:
    line = start_fails(tmp_path, postgres_cluster.url("no_such_database"))
    assert "no_such_database" in line and "does not exist" in line


def test_a_newer_schema_is_refused(tmp_path: Path, postgres_url: str) -> None:
    migrate(tmp_path, parse_database_url(postgres_url))
    scalar(postgres_url, "UPDATE alembic_version SET version_num = '9999'")
    line = start_fails(tmp_path, postgres_url)
    assert "schema revision 9999, newer than this flowagent knows" in line
    # Nothing was touched: a newer flowagent can still use it.
    assert scalar(postgres_url, "SELECT version_num FROM alembic_version") == "9999"
    upgraded = agent_cli(tmp_path, "database", "upgrade", "--database-url", postgres_url)
    assert upgraded.returncode == 1 and "newer than this flowagent" in upgraded.stderr


def test_the_ui_overview_counts_late_runs_on_postgres(tmp_path: Path, postgres_url: str) -> None:
    """The overview's backlog query once grouped by ``state_name = 'Late'``, which PostgreSQL
    refuses (a 500 for every UI page load on PostgreSQL)."""
    env = {"AGENT_LATE_AFTER_SECONDS": "1"}
    with (
        running_server(tmp_path / "home", env, database_url=postgres_url) as server,
        server.client() as api,
    ):
        queue = make_queue(api)
        make_run(api, make_deployment(api, queue, command=["true"]))

        def backlog() -> dict[str, Any] | None:
            answer = api.get("overview", params={"hours": 1})
            assert answer.status_code == 200, answer.text
            mine = next(q for q in answer.json()["queues"] if q["id"] == queue["id"])
            return mine if mine["late"] == 1 else None

        late = wait_for(backlog, timeout=30, what="the run to be counted late")
        assert (late["scheduled"], late["active"]) == (1, 0)
