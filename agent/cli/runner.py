"""`agent runner ls`: the flow runners installed here, and the options each takes."""

from __future__ import annotations

from typing import Annotated

import typer

from agent.cli.output import info, out, print_json, table, text
from agent.errors import InputError, UnknownRunner

app = typer.Typer(help="Flow runners: how an agent launches a run.", no_args_is_help=True)


@app.command("ls")
def ls(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """List the installed runners (entry points in group flowagent.runners) and their options."""
    from runners.registry import describe_runner, runner_entries

    entries = runner_entries()
    options = {e.name: describe_runner(e.name) for e in entries if e.cls is not None}
    if as_json:
        print_json(
            [
                {
                    "name": e.name,
                    "target": e.target,
                    "package": e.package,
                    "error": e.error,
                    "options": [o._asdict() for o in options.get(e.name, [])],
                }
                for e in entries
            ]
        )
        return
    if not entries:
        info("no runners installed; reinstall flowagent, which provides 'subprocess'")
        return
    rows = table("name", "status", "package", "entry point")
    for e in entries:
        status = text("ok", style="green") if e.error is None else text(e.error, style="red")
        rows.add_row(e.name, status, e.package or "-", e.target)
    console = out()
    console.print(rows)
    for name, described in options.items():
        if not described:
            continue
        option_rows = table("option", "type", "default", "description")
        for o in described:
            option_rows.add_row(o.option, o.type, o.default, o.description)
        console.print()
        console.print(
            text(f"options of runner {name!r} (--runner-option KEY=VALUE):", style="bold")
        )
        console.print(option_rows)


# What `agent start` runs a deployment naming no runner on, unless given --runner.
DEFAULT_RUNNER = "subprocess"


def check_runner_options(runner: str | None, options: dict[str, object]) -> None:
    """Refuse a runner that is not installed, or options it does not take.

    No runner named means the agent's default (``agent start --runner``), decided where the
    run is launched; options given without a runner are checked against the default default
    (``subprocess``), which is what runs them unless every agent of the queue says otherwise.
    An agent host with runners this one lacks: ``--no-check``.
    """
    from runners.registry import validate_options

    if runner is None:
        if not options:
            return
        try:
            validate_options(DEFAULT_RUNNER, dict(options))
        except InputError as exc:
            raise InputError(
                f"{exc.message} (no --runner given: a deployment naming no runner runs on its "
                f"agent's --runner, {DEFAULT_RUNNER!r} by default)",
                hint="name the runner these options are for, e.g. --runner docker (or "
                "'runner:' in the file); --no-check if every agent of the queue is started "
                "with --runner that takes them",
            ) from None
        return
    try:
        validate_options(runner, dict(options))
    except UnknownRunner as exc:
        raise UnknownRunner(
            exc.message,
            hint=f"{exc.hint}; pass --no-check if it is installed only where the agent runs",
        ) from exc
