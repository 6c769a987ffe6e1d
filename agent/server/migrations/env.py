"""Alembic environment: runs on the connection ``agent.server.db`` hands over.

There is no alembic.ini; :func:`agent.server.db.migrate` configures Alembic in code.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from agent.server.orm import Base

target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    # Reached only when someone runs the alembic command line against a database by URL.
    url = context.config.get_main_option("sqlalchemy.url")
    if url is None:
        raise RuntimeError("set sqlalchemy.url or pass a connection in config.attributes")
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise RuntimeError("offline (SQL script) migrations are not supported; run them online")
run_migrations_online()
