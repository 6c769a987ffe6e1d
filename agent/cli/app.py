"""The root `agent` command: global options, error handling, and the command groups."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from typer import _click
from typer.core import TyperGroup

from agent import __version__
from agent.cli import (
    agents,
    concurrency_limit,
    config,
    database,
    deployment,
    flow_run,
    notification,
    runner,
    schedule,
    server,
    sources,
    start,
    work_queue,
)
from agent.cli.context import CliState
from agent.cli.output import print_error
from agent.cli.parsing import invalid_input
from agent.errors import FlowAgentError, InputError


class ErrorHandlingGroup(TyperGroup):
    """Turns every expected error into ``error: …`` / ``hint: …`` on stderr and exit code 1."""

    def invoke(self, ctx: _click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FlowAgentError as exc:
            print_error(exc)
            raise typer.Exit(1) from None
        except ValidationError as exc:  # a value the wire models refuse, e.g. a too-long name
            print_error(InputError(invalid_input(exc)))
            raise typer.Exit(1) from None


app = typer.Typer(
    cls=ErrorHandlingGroup,
    name="agent",
    help="flowagent: run workflow flow runs from a work queue, and manage the embedded server.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # locals may hold the API key
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"flowagent {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    home: Annotated[
        Path | None,
        typer.Option(
            "--home",
            help="State directory (database, config.toml). Env: AGENT_HOME. Default: ~/.agent",
            show_default=False,
        ),
    ] = None,
    config_file: Annotated[
        Path | None,
        typer.Option(
            "--config", help="Config file to read (default: HOME/config.toml)", show_default=False
        ),
    ] = None,
    api_url: Annotated[
        list[str] | None,
        typer.Option(
            "--api-url",
            help="Work-queue API URL; repeat it for a server's replicas (tried in turn). "
            "Env: AGENT_API_URL (comma-separated). Default: http://127.0.0.1:4200/api",
            show_default=False,
        ),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key", help="API key for the server. Env: AGENT_API_KEY", show_default=False
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    ctx.obj = CliState(
        flags={"api_url": api_url, "api_key": api_key},
        home=home,
        config_file=config_file,
    )


app.add_typer(server.app, name="server")
app.command("start", no_args_is_help=True)(start.start)
app.add_typer(work_queue.app, name="work-queue")
app.add_typer(deployment.app, name="deployment")
deployment.app.add_typer(schedule.app, name="schedule")
app.add_typer(flow_run.app, name="flow-run")
app.add_typer(agents.app, name="agents")
app.add_typer(concurrency_limit.app, name="concurrency-limit")
app.add_typer(notification.app, name="notification")
app.add_typer(runner.app, name="runner")
app.add_typer(sources.app, name="sources")
app.add_typer(config.app, name="config")
app.add_typer(database.app, name="database")
