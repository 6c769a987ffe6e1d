"""The embedded work-queue server: FastAPI + SQLAlchemy on SQLite, installed with the `server` extra.

It shares only the wire models in :mod:`agent.models` with the daemon. Start it with
:func:`agent.server.main.serve` (what `agent server start` calls) or `python -m agent.server`.
This module imports nothing of the extra, so that a missing one can be said plainly.
"""

from __future__ import annotations

import importlib.util

from agent.errors import ConfigError

#: What the `server` extra installs; checked before anything of the server is imported.
REQUIRED_MODULES = ("fastapi", "starlette", "uvicorn", "sqlalchemy", "alembic", "croniter")


def require_installed() -> None:
    """Raise a ConfigError naming what is missing when the `server` extra is not installed."""
    missing = [name for name in REQUIRED_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(
            f"the embedded server is not installed (missing: {', '.join(missing)})",
            hint="pip install 'flowagent[server]'",
        )
