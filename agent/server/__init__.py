"""The embedded work-queue server: FastAPI + SQLAlchemy on SQLite, installed with the `server` extra.

It shares only the wire models in :mod:`agent.models` with the daemon. Start it with
:func:`agent.server.main.serve` (what `agent server start` calls) or `python -m agent.server`.
"""
