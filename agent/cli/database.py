"""`agent database …`: the embedded server's database (SQLite, or PostgreSQL by database_url)."""

from __future__ import annotations

from typing import Annotated

import typer

from agent.cli.context import settings_of
from agent.cli.output import confirm, say
from agent.config import Settings, with_overrides
from agent.server import require_installed

app = typer.Typer(help="The embedded server's database.", no_args_is_help=True)

DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="The database (setting database_url, default: SQLite in the agent home).",
        show_default=False,
    ),
]


def _settings(ctx: typer.Context, database_url: str | None) -> Settings:
    settings = with_overrides(settings_of(ctx), database_url=database_url)
    require_installed()
    return settings


@app.command("reset")
def reset(
    ctx: typer.Context,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    database_url: DatabaseUrl = None,
) -> None:
    """Drop every queue, deployment, run, log and agent, and start from an empty database."""
    settings = _settings(ctx, database_url)
    from agent.server.schema import describe, reset_database
    from agent.server.settings import database_target

    target = database_target(settings.home, settings.database_url)
    confirm(f"Erase everything in {describe(target)}?", yes)
    reset_database(settings.home, target)
    say(f"reset the database at {describe(target)}")


@app.command("upgrade")
def upgrade(ctx: typer.Context, database_url: DatabaseUrl = None) -> None:
    """Bring the database's schema to this version's (the server also does it when it starts)."""
    settings = _settings(ctx, database_url)
    from agent.server.schema import describe, migrate
    from agent.server.settings import database_target

    target = database_target(settings.home, settings.database_url)
    revision = migrate(settings.home, target)
    say(f"the database at {describe(target)} is at schema revision {revision}")
