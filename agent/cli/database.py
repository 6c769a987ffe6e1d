"""`agent database reset`: wipe the embedded server's database."""

from __future__ import annotations

from typing import Annotated

import typer

from agent.cli.context import settings_of
from agent.cli.output import confirm, say
from agent.server import require_installed

app = typer.Typer(help="The embedded server's database.", no_args_is_help=True)


@app.command("reset")
def reset(
    ctx: typer.Context,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Drop every queue, deployment, run, log and agent, and start from an empty database."""
    settings = settings_of(ctx)
    require_installed()
    from agent.server.db import reset_database
    from agent.server.settings import database_path

    path = database_path(settings.home)
    confirm(f"Erase everything in {path}?", yes)
    reset_database(settings.home)
    say(f"reset the database at {path}")
