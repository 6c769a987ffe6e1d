"""`agent sources ls|prune`: this host's git mirrors, bundles and run checkouts."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import typer

from agent.cli.context import settings_of
from agent.cli.output import age, print_json, print_table, say, table
from agent.errors import InputError
from agent.models import parse_duration
from agent.sources.inventory import CachedSource, inventory, prune

app = typer.Typer(
    help="This host's cache of deployment code: git mirrors, bundles, run checkouts.",
    no_args_is_help=True,
)


def _size(n: int) -> str:
    for unit in ("B", "K", "M", "G"):
        if n < 1024 or unit == "G":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n //= 1024
    return str(n)  # pragma: no cover


def _rows(entries: list[CachedSource]) -> None:
    rows = table("kind", "name", "size", "last used", "path")
    for entry in entries:
        used = dt.datetime.fromtimestamp(entry.last_used, dt.UTC)
        rows.add_row(entry.kind, entry.name, _size(entry.size), age(used), str(entry.path))
    print_table(rows, "nothing cached on this host")


@app.command("ls")
def ls(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List the mirrors, bundles and checkouts under AGENT_HOME."""
    entries = inventory(settings_of(ctx).home)
    if as_json:
        print_json([e.as_json() for e in entries])
        return
    _rows(entries)


@app.command("prune")
def prune_command(
    ctx: typer.Context,
    older_than: Annotated[
        str | None,
        typer.Option(
            "--older-than", help="Unused this long (30m, 12h, 7d); default: source_max_idle."
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would go, remove nothing.")
    ] = False,
) -> None:
    """Remove mirrors and bundles no run used lately (one a run is reading stays)."""
    settings = settings_of(ctx)
    max_idle = settings.source_max_idle
    if older_than is not None:
        try:
            max_idle = float(parse_duration(older_than))
        except (ValueError, TypeError) as exc:
            raise InputError(f"--older-than: {exc}") from None
    removed = prune(settings.home, max_idle, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for entry in removed:
        say(f"{verb} {entry.kind} {entry.name} ({_size(entry.size)})")
    say(f"{verb} {len(removed)} item(s), {_size(sum(e.size for e in removed))}")
