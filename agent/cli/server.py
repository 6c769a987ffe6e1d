"""`agent server …`: the embedded work-queue server."""

from __future__ import annotations

from typing import Annotated

import typer

from agent.cli.context import settings_of
from agent.config import with_overrides
from agent.server import require_installed

app = typer.Typer(help="The embedded work-queue server (needs the `server` extra).")


@app.command("start")
def start(
    ctx: typer.Context,
    host: Annotated[
        str | None,
        typer.Option(
            "--host",
            help="Interface to listen on (setting server_host, default 127.0.0.1).",
            show_default=False,
        ),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(
            "--port",
            help="TCP port (setting server_port, default 4200).",
            show_default=False,
        ),
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            help="PostgreSQL database, postgresql+psycopg://user@host:5432/db (setting "
            "database_url, default: SQLite in the agent home). Replicas may share one.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Serve the work-queue API (SQLite under the agent home, or PostgreSQL)."""
    settings = with_overrides(
        settings_of(ctx), server_host=host, server_port=port, database_url=database_url
    )
    require_installed()
    from agent.logs import configure_logging
    from agent.server.main import serve
    from agent.server.settings import from_settings

    configure_logging(settings.log_level, settings.log_format, route_stdlib=True)
    serve(from_settings(settings))
