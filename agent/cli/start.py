"""`agent start QUEUE_ID`: the agent daemon on one work queue; `agent start --pool NAME`: on a
Prefect work pool's queues, as `prefect worker start --pool NAME` serves them."""

from __future__ import annotations

import sys
from dataclasses import replace
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
        str | None,
        typer.Argument(
            help="The work queue's UUID (see agent work-queue ls); or give --pool.",
            show_default=False,
        ),
    ] = None,
    pool: Annotated[
        str | None,
        typer.Option(
            "--pool",
            help="Prefect servers: serve this work pool's queues, highest priority first, like "
            "`prefect worker start --pool` (setting pool).",
            show_default=False,
        ),
    ] = None,
    work_queue: Annotated[
        list[str] | None,
        typer.Option(
            "--work-queue",
            help="With --pool: serve only this queue of the pool (repeatable; setting "
            "work_queues; default: all of them).",
            show_default=False,
        ),
    ] = None,
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
    prefetch_seconds: Annotated[
        float | None,
        typer.Option(
            "--prefetch-seconds",
            help="Prefect servers: claim scheduled runs this many seconds early and start their "
            "engine ahead, like PREFECT_WORKER_PREFETCH_SECONDS (setting prefetch_seconds; "
            "0: only once due).",
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
    settings = settings_of(ctx)
    if queue_id is not None and pool is not None:
        raise ConfigError(
            "give a work queue's id or --pool, not both",
            hint="agent start QUEUE_ID, or agent start --pool POOL [--work-queue NAME]...",
        )
    if queue_id is not None:
        # The queue named on the command line beats a pool from the environment or file.
        settings = replace(settings, pool=None, work_queues=())
    settings = with_overrides(
        settings,
        pool=pool,
        work_queues=list(work_queue) if work_queue else None,
        limit=limit,
        api_url=api_url,
        api_key=api_key,
        backend=backend,
        max_cpu_percent=max_cpu_percent,
        min_free_memory=min_free_memory,
        max_load=max_load,
        health_port=health_port,
        prefetch_seconds=prefetch_seconds,
    )
    if settings.work_queues and settings.pool is None:
        raise ConfigError(
            "--work-queue names queues of a Prefect work pool: give the pool with --pool",
            hint="agent start --pool POOL --work-queue NAME",
        )
    if queue_id is not None:
        queue = parse_uuid(queue_id, "work-queue", "queues", LIST_QUEUES)
    elif settings.pool is not None:
        from agent.backends.prefect_pools import pool_queue_id

        queue = pool_queue_id(settings.pool)
    else:
        raise ConfigError(
            "no work queue to serve",
            hint="agent start QUEUE_ID (agent work-queue ls), or for a Prefect work pool "
            "agent start --pool POOL [--work-queue NAME]...",
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
