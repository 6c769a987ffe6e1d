"""`agent start QUEUE [QUEUE...]`: the agent daemon on its work queues, in priority order;
`agent start --pool NAME`: on a Prefect work pool's queues, as `prefect worker start --pool NAME`
serves them."""

from __future__ import annotations

import contextlib
import sys
from dataclasses import replace
from typing import Annotated
from uuid import UUID

import typer

from agent.cli.context import settings_of
from agent.cli.lookup import LIST_QUEUES
from agent.cli.parsing import parse_pairs
from agent.cli.runner import DEFAULT_RUNNER
from agent.config import default_agent_name, with_overrides
from agent.errors import ConfigError, InputError
from agent.models import MAX_AGENT_QUEUES


def parse_queue_refs(values: list[str]) -> tuple[str, ...]:
    """The queues as given (a UUID in its canonical form); refused when empty or repeated."""
    refs: list[str] = []
    for value in values:
        ref = value.strip()
        if not ref or "\x00" in ref:
            raise InputError(
                f"{value!r} is not a work queue; give its UUID or name ({LIST_QUEUES})"
            )
        # A name stays as given: the agent resolves it once the server answers.
        with contextlib.suppress(ValueError):
            ref = str(UUID(ref))
        if ref in refs:
            raise InputError(
                f"work queue {value!r} is given twice; name each queue once, highest priority first"
            )
        refs.append(ref)
    if len(refs) > MAX_AGENT_QUEUES:
        raise InputError(
            f"{len(refs)} work queues given; an agent serves at most {MAX_AGENT_QUEUES}"
        )
    return tuple(refs)


def start(
    ctx: typer.Context,
    queues: Annotated[
        list[str] | None,
        typer.Argument(
            help="The work queues to serve, highest priority first: UUIDs, or names on the "
            "embedded server (see agent work-queue ls). A free slot takes every due run of the "
            "first before any of the next. Or give --pool.",
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
        list[str] | None,
        typer.Option(
            "--api-url",
            help="Work-queue API URL (setting api_url); repeat it for a server's replicas.",
            show_default=False,
        ),
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
    """Start an agent: poll its queues, claim due runs, run and supervise them, report back."""
    settings = settings_of(ctx)
    if queues and pool is not None:
        raise ConfigError(
            "give work queues or --pool, not both",
            hint="agent start QUEUE [QUEUE...], or agent start --pool POOL [--work-queue NAME]...",
        )
    if queues:
        # The queues named on the command line beat a pool from the environment or file.
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
    if queues:
        refs = parse_queue_refs(queues)
    elif settings.pool is not None:
        from agent.backends.prefect_pools import pool_queue_id

        refs = (str(pool_queue_id(settings.pool)),)
    else:
        raise ConfigError(
            "no work queue to serve",
            hint="agent start QUEUE [QUEUE...] (agent work-queue ls), or for a Prefect work pool "
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
        queues=refs,
        name=name or default_agent_name(refs),
        tags=tuple(tag or ()),
        run_once=run_once,
        runner=runner,
        runner_options=runner_options,
    )
    sys.exit(run_agent(settings, options))
