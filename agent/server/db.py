"""The SQLite engine, its transactions, and the schema migrations.

Every write transaction starts with ``BEGIN IMMEDIATE``: it takes SQLite's write lock before the
first read, so a read-then-write (a claim, a state transition) can neither deadlock against
another writer nor act on rows another writer is about to change, even when two server
processes share one database file. Reads use a plain deferred ``BEGIN`` and, thanks to WAL,
never wait for writers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import anyio.to_thread
from alembic import command
from alembic.config import Config
from sqlalchemy import URL, Connection, Engine, MetaData, create_engine, event
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry

from agent.private import private_dir, private_file
from agent.server.settings import database_path

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
BUSY_TIMEOUT_MS = 5000
_WRITE_OPTION = "flowagent_write"

P = ParamSpec("P")
T = TypeVar("T")


def create_sqlite_engine(path: Path) -> Engine:
    """An engine on the database file with our pragmas and transaction control.

    The file holds deployments' and runs' env: it is created 0600 (SQLite gives its WAL and
    shared-memory files the database's mode) and an existing one is tightened to 0600.
    """
    private_file(path)
    for suffix in ("-wal", "-shm", "-journal"):
        private_file(path.with_name(path.name + suffix), create=False)
    engine = create_engine(
        # URL.create, not an f-string: a path may hold characters a URL would misread (?, #, %).
        URL.create("sqlite", database=str(path)),
        connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT_MS / 1000},
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
            cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get(_WRITE_OPTION):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")

    return engine


class Database:
    """The engine plus the two kinds of session the routes use."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.engine = create_sqlite_engine(path)
        self._reader = sessionmaker(self.engine, expire_on_commit=False)
        self._writer = sessionmaker(
            self.engine.execution_options(**{_WRITE_OPTION: True}), expire_on_commit=False
        )
        # Writers of this process queue here rather than in SQLite's busy handler, which
        # sleeps and retries: under load from dozens of agents some writer would lose every
        # retry for the whole busy timeout and answer 503. SQLite's lock still guards the file
        # against other processes.
        self._write_lock = threading.RLock()

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A session for reads; closing it rolls its transaction back."""
        with self._reader() as session:
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A session holding the write lock from its first statement; commits on success."""
        with self._write_lock, self._writer() as session, session.begin():
            yield session

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run blocking database work in a worker thread, off the event loop."""
        return await anyio.to_thread.run_sync(lambda: fn(*args, **kwargs))

    def dispose(self) -> None:
        self.engine.dispose()


def _alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Percent signs in the path would otherwise be read as interpolation by configparser.
    config.set_main_option("sqlalchemy.url", engine.url.render_as_string().replace("%", "%%"))
    return config


def _upgrade(engine: Engine) -> None:
    config = _alembic_config(engine)
    with engine.execution_options(**{_WRITE_OPTION: True}).connect() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def migrate(home: Path) -> None:
    """Create the database under ``home`` if needed and bring its schema to the newest version."""
    private_dir(home)
    engine = create_sqlite_engine(database_path(home))
    try:
        _upgrade(engine)
    finally:
        engine.dispose()


def reset_database(home: Path) -> None:
    """Drop every table (ours and Alembic's) and migrate again: an empty, current database."""
    private_dir(home)
    engine = create_sqlite_engine(database_path(home))
    try:
        with engine.execution_options(**{_WRITE_OPTION: True}).begin() as connection:
            existing = MetaData()
            existing.reflect(connection)
            existing.drop_all(connection)
        _upgrade(engine)
    finally:
        engine.dispose()
