"""Creating and upgrading the schema (Alembic), on SQLite or PostgreSQL, with errors a person
can act on: a database that cannot be reached, a wrong URL, or a schema newer than this code."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import URL, Connection, Engine, MetaData, text
from sqlalchemy.exc import SQLAlchemyError

from agent.errors import ConfigError
from agent.private import private_dir
from agent.server.engines import WRITE_OPTION, create_engine_for, sqlite_url

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
#: pg_advisory_lock key held while migrating: replicas starting together migrate one by one.
MIGRATE_LOCK_KEY = 0x666C6F77_00000002


def describe(url: URL) -> str:
    """The database as messages show it: never its password."""
    if url.get_backend_name() == "sqlite":
        return str(url.database)
    return url.render_as_string(hide_password=True)


def one_line(exc: BaseException) -> str:
    """The driver's own words, on one line (psycopg's span several)."""
    reason = getattr(exc, "orig", None) or exc
    return " ".join(str(reason).split()) or type(reason).__name__


@contextmanager
def database_errors(url: URL) -> Iterator[None]:
    """Turn a database that cannot be reached or used into a one-line ConfigError."""
    try:
        yield
    except (OSError, SQLAlchemyError) as exc:
        if url.get_backend_name() == "sqlite":
            hint = "check that AGENT_HOME is a writable directory"
        else:
            hint = (
                "check database_url (AGENT_DATABASE_URL, --database-url) and that the server is up"
            )
        raise ConfigError(
            f"cannot use the database at {describe(url)}: {one_line(exc)}", hint=hint
        ) from exc


def _alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Percent signs in the path would otherwise be read as interpolation by configparser.
    config.set_main_option("sqlalchemy.url", engine.url.render_as_string().replace("%", "%%"))
    return config


def head_revision() -> str:
    head = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
    assert head is not None
    return head


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def _refuse_newer(connection: Connection, url: URL) -> None:
    revision = current_revision(connection)
    if revision is None:
        return
    try:
        known = ScriptDirectory(str(MIGRATIONS_DIR)).get_revision(revision)
    except CommandError:
        known = None
    if known is None:
        raise ConfigError(
            f"the database at {describe(url)} has schema revision {revision}, newer than this "
            f"flowagent knows (its newest is {head_revision()})",
            hint="upgrade flowagent on this host, or point database_url at another database",
        )


@contextmanager
def _migrating(engine: Engine) -> Iterator[Connection]:
    """A connection to migrate on; on PostgreSQL one replica at a time."""
    with engine.execution_options(**{WRITE_OPTION: True}).connect() as connection:
        if engine.dialect.name != "postgresql":
            yield connection
            return
        connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATE_LOCK_KEY})
        connection.commit()  # the session lock stays; Alembic begins its own transaction
        try:
            yield connection
        finally:
            connection.rollback()
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATE_LOCK_KEY})
            connection.commit()


def _upgrade(connection: Connection, engine: Engine, url: URL) -> None:
    _refuse_newer(connection, url)
    if connection.in_transaction():
        connection.commit()
    config = _alembic_config(engine)
    config.attributes["connection"] = connection
    command.upgrade(config, "head")
    if connection.in_transaction():
        connection.commit()


def _target(home: Path, url: URL | None) -> URL:
    target = url if url is not None else sqlite_url(home / "flowagent.db")
    if target.get_backend_name() == "sqlite":
        private_dir(Path(target.database or home).parent)
    return target


def migrate(home: Path, url: URL | None = None) -> str:
    """Create the database if needed and bring its schema to the newest version; that version.

    Args:
        home: the agent home; the SQLite database lives there unless ``url`` names another.
        url: the database (``database_url``), or None for SQLite under ``home``.

    Raises:
        ConfigError: the database cannot be reached or written, or its schema is newer.
    """
    target = _target(home, url)
    with database_errors(target):
        engine = create_engine_for(target)
        try:
            with _migrating(engine) as connection:
                _upgrade(connection, engine, target)
                return current_revision(connection) or ""
        finally:
            engine.dispose()


def reset_database(home: Path, url: URL | None = None) -> None:
    """Drop every table (ours and Alembic's) and migrate again: an empty, current database."""
    target = _target(home, url)
    with database_errors(target):
        engine = create_engine_for(target)
        try:
            with _migrating(engine) as connection:
                existing = MetaData()
                existing.reflect(connection)
                existing.drop_all(connection)
                connection.commit()
                _upgrade(connection, engine, target)
        finally:
            engine.dispose()
