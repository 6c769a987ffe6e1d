"""Rows for unit tests of the server's database code: a migrated SQLite file, and a queue with a
deployment on it, written straight to the database (no server, no routes)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from agent.server.db import Database, migrate
from agent.server.orm import DeploymentRow, WorkQueueRow
from agent.server.settings import database_path


@contextmanager
def migrated_database(home: Path) -> Iterator[Database]:
    """A database at ``home``, its schema brought up to date."""
    migrate(home)
    database = Database(database_path(home))
    try:
        yield database
    finally:
        database.dispose()


def add_deployment(session: Session, created: datetime, **fields: Any) -> DeploymentRow:
    """A new queue and a deployment on it (``fields`` override DeploymentRow columns)."""
    queue = WorkQueueRow(
        id=uuid.uuid4(), name=f"q-{uuid.uuid4().hex[:8]}", tags=[], paused=False, created=created
    )
    session.add(queue)
    session.flush()  # no ORM relationships: rows go in the order they are flushed
    values: dict[str, Any] = {
        "entrypoint": None,
        "command": ["true"],
        "working_dir": None,
        "parameters": {},
        "tags": [],
        "runner": None,
        "runner_options": {},
        "env": {},
        "timeout_seconds": None,
        "retries": 0,
        "retry_delay_seconds": 0,
    } | fields
    deployment = DeploymentRow(
        id=uuid.uuid4(),
        name=f"d-{uuid.uuid4().hex[:8]}",
        work_queue_id=queue.id,
        created=created,
        updated=created,
        **values,
    )
    session.add(deployment)
    session.flush()
    return deployment
