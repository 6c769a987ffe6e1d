"""`agent start QUEUE_ID`: the agent daemon on one work queue."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from agent.cli.context import settings_of
from agent.cli.lookup import LIST_QUEUES
from agent.cli.parsing import parse_pairs, parse_uuid
from agent.cli.runner import DEFAULT_RUNNER
from agent.config import default_agent_name, with_overrides
from agent.errors import ConfigError


def start(
    ctx: typer.Context,
    queue_id: Annotated[
        str, typer.Argument(help="The work queue's UUID (see agent work-queue ls).")
    ],
    tag: Annotated[
        list[str] | None,
        typer.Option(
            "--tag", "-t", help="Only take runs carrying this tag (repeatable).", show_default=False
        ),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            "-n",
            help="Agent name, its identity (default: HOSTNAME-<first 8 digits of the queue id>).",
            show_default=False,
        ),
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option(
            "--limit", "-l", help="Runs executed at once (setting limit).", show_default=False
        ),
    ] = None,
    run_once: Annotated[
        bool,
        typer.Option("--run-once", help="Take the runs due now, finish them, and exit."),
    ] = False,
    api_url: Annotated[
        str | None,
        typer.Option("--api-url", help="Work-queue API URL (setting api_url).", show_default=False),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option("--api-key", help="API key (setting api_key).", show_default=False),
    ] = None,
    backend: Annotated[
        str | None,
        typer.Option(
            "--backend",
            help="Kind of server at the API URL: auto (ask its /health), native or prefect "
            "(setting backend).",
            show_default=False,
        ),
    ] = None,
    runner: Annotated[
        str,
        typer.Option(
            "--runner",
            help="Runner for deployments that name none (and for a Prefect server's runs).",
        ),
    ] = DEFAULT_RUNNER,
    runner_option: Annotated[
        list[str] | None,
        typer.Option(
            "--runner-option",
            help="Default option KEY=VALUE for runs on --runner (repeatable; a deployment's own "
            "options win), e.g. python=/path/to/venv/bin/python.",
            show_default=False,
        ),
    ] = None,
    max_cpu_percent: Annotated[
        float | None,
        typer.Option(
            "--max-cpu-percent",
            help="Claim nothing while host CPU use is above this (setting max_cpu_percent).",
            show_default=False,
        ),
    ] = None,
    min_free_memory: Annotated[
        str | None,
        typer.Option(
            "--min-free-memory",
            help="Claim nothing while less memory is available, e.g. 500M or 2G "
            "(setting min_free_memory).",
            show_default=False,
        ),
    ] = None,
    max_load: Annotated[
        float | None,
        typer.Option(
            "--max-load",
            help="Claim nothing while the 1-minute load average is above this (setting max_load).",
            show_default=False,
        ),
    ] = None,
    health_port: Annotated[
        int | None,
        typer.Option(
            "--health-port",
            help="Serve /healthz and /metrics on this port (setting health_port; off by default).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Start an agent: poll the queue, claim due runs, run and supervise them, report back."""
    queue = parse_uuid(queue_id, "work-queue", "queues", LIST_QUEUES)
    settings = with_overrides(
        settings_of(ctx),
        limit=limit,
        api_url=api_url,
        api_key=api_key,
        backend=backend,
        max_cpu_percent=max_cpu_percent,
        min_free_memory=min_free_memory,
        max_load=max_load,
        health_port=health_port,
    )
    runner_options = parse_pairs(runner_option or [], "--runner-option")
    from runners.registry import validate_options

    # An unknown runner or a bad option is refused now, not when the first run arrives.
    validate_options(runner, runner_options)
    from agent.daemon import AgentOptions, run_agent
    from agent.private import private_dir

    # Created here, before the agent's own directory: runs' env passes through it (0700).
    try:
        private_dir(settings.home)
    except OSError as exc:
        raise ConfigError(
            f"cannot create the agent home {settings.home}: {exc.strerror}",
            hint="set AGENT_HOME (or --home) to a directory this user may write",
        ) from exc

    options = AgentOptions(
        queue_id=queue,
        name=name or default_agent_name(queue),
        tags=tuple(tag or ()),
        run_once=run_once,
        runner=runner,
        runner_options=runner_options,
    )
    sys.exit(run_agent(settings, options))
