"""One SQLAlchemy engine per kind of database the server runs on: SQLite (the default) or
PostgreSQL (several replicas on one database).

SQLite gets its pragmas and ``BEGIN IMMEDIATE`` for write transactions (see
:mod:`agent.server.db`). PostgreSQL needs nothing of the kind: its row locks and advisory locks
are taken by the code that needs them.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from sqlalchemy import URL, Connection, Engine, create_engine, event, make_url
from sqlalchemy.pool import ConnectionPoolEntry

from agent.errors import ConfigError
from agent.private import private_file

BUSY_TIMEOUT_MS = 5000
#: The execution option that marks a connection as a writer's (SQLite: ``BEGIN IMMEDIATE``).
WRITE_OPTION = "flowagent_write"
#: Seconds to wait for PostgreSQL to accept a connection before saying it is down.
CONNECT_TIMEOUT_SECONDS = 5
POSTGRES_DRIVER = "postgresql+psycopg"


def sqlite_url(path: Path) -> URL:
    # URL.create, not an f-string: a path may hold characters a URL would misread (?, #, %).
    return URL.create("sqlite", database=str(path))


def parse_database_url(raw: str) -> URL:
    """``raw`` as a URL the server can use; ``postgresql://`` means psycopg 3.

    Raises:
        ValueError: not a URL, or a database the server does not run on.
    """
    try:
        url = make_url(raw)
    except Exception as exc:  # sqlalchemy raises ArgumentError; say it in our words
        raise ValueError("must be a URL such as postgresql+psycopg://user@host:5432/db") from exc
    if url.drivername in ("postgresql", "postgres", "postgresql+psycopg"):
        return url.set(drivername=POSTGRES_DRIVER)
    if url.drivername == "sqlite" and url.database:
        return url
    raise ValueError(
        "must be a postgresql+psycopg:// URL (or sqlite:////absolute/path.db), "
        f"not {url.drivername}://"
    )


def is_busy(exc: Exception) -> bool:
    """Whether a database error says another writer holds the lock (SQLite: locked or busy)."""
    reason = str(getattr(exc, "orig", exc)).lower()
    return "locked" in reason or "busy" in reason


def create_sqlite_engine(path: Path, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> Engine:
    """An engine on the database file with our pragmas and transaction control
    (``busy_timeout_ms=0``: a write that finds another process writing fails at once).

    The file holds deployments' and runs' env: it is created 0600 (SQLite gives its WAL and
    shared-memory files the database's mode) and an existing one is tightened to 0600.
    """
    private_file(path)
    for suffix in ("-wal", "-shm", "-journal"):
        private_file(path.with_name(path.name + suffix), create=False)
    engine = create_engine(
        sqlite_url(path),
        connect_args={"check_same_thread": False, "timeout": busy_timeout_ms / 1000},
        # One connection per worker thread at most (anyio's default limiter is 40 threads).
        pool_size=20,
        max_overflow=20,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # Take BEGIN away from the sqlite3 module so that _on_begin decides which kind to emit.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get(WRITE_OPTION):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")

    return engine


def require_psycopg() -> None:
    if importlib.util.find_spec("psycopg") is None:
        raise ConfigError(
            "a PostgreSQL database_url needs the psycopg driver, which is not installed",
            hint="pip install 'flowagent[server,postgres]'",
        )


def _nul_free_strings(dbapi_connection: Any) -> None:
    """PostgreSQL's text cannot hold NUL, which SQLite stores and a flow may print: it becomes
    U+FFFD, the replacement character, rather than a batch of log lines refused for ever."""
    from psycopg.types.string import StrBinaryDumper, StrDumperUnknown

    class NulFreeText(StrDumperUnknown):
        def dump(self, obj: str) -> Any:
            return super().dump(obj.replace("\x00", "\ufffd"))

    class NulFreeBinary(StrBinaryDumper):
        def dump(self, obj: str) -> Any:
            return super().dump(obj.replace("\x00", "\ufffd"))

    dbapi_connection.adapters.register_dumper(str, NulFreeText)
    dbapi_connection.adapters.register_dumper(str, NulFreeBinary)


def create_postgres_engine(url: URL) -> Engine:
    """An engine on PostgreSQL: a pool sized like SQLite's, connections checked before use
    (a round trip each; without it, every pooled connection would cost one request a 503
    after a database restart or failover)."""
    require_psycopg()
    engine = create_engine(
        url,
        pool_size=20,
        max_overflow=20,
        pool_pre_ping=True,
        connect_args={"connect_timeout": CONNECT_TIMEOUT_SECONDS, "application_name": "flowagent"},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        _nul_free_strings(dbapi_connection)

    return engine


def create_engine_for(target: Path | URL) -> Engine:
    """The engine for a SQLite file (a path) or a database URL."""
    if isinstance(target, Path):
        return create_sqlite_engine(target)
    if target.get_backend_name() == "sqlite":
        return create_sqlite_engine(Path(target.database or ""))
    return create_postgres_engine(target)
