"""`agent flow-run …`: list, inspect, follow the logs of, cancel, retry and rerun flow runs."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated, Any
from uuid import UUID

import typer

from agent.backends.native import NativeBackend
from agent.cli.context import settings_of
from agent.cli.lookup import LIST_RUNS, resolve_deployment, resolve_queue, run_id
from agent.cli.output import (
    call,
    info,
    out,
    print_documents,
    print_table,
    run_state,
    say,
    state_text,
    table,
    text,
    when,
)
from agent.cli.parsing import parse_pairs
from agent.errors import InputError, NotFound
from agent.models import FlowRun, FlowRunRerun, LogLine, LogStream, StateType

if TYPE_CHECKING:
    from rich.text import Text

app = typer.Typer(help="Flow runs: one execution of a deployment each.", no_args_is_help=True)

RunArg = Annotated[str, typer.Argument(help="The flow run's UUID.", show_default=False)]

LOG_PAGE = 1000
POLL_SECONDS = 0.3
STREAM_STYLES = {LogStream.STDOUT: "green", LogStream.STDERR: "red", LogStream.AGENT: "cyan"}


def parse_states(values: list[str]) -> list[StateType]:
    states = []
    for value in values:
        try:
            states.append(StateType(value.upper()))
        except ValueError:
            raise InputError(
                f"--state {value!r}: no such state",
                hint="states: " + ", ".join(s.value for s in StateType),
            ) from None
    return states


async def get_run(backend: NativeBackend, ref: UUID) -> FlowRun:
    try:
        return await backend.get_run(ref)
    except NotFound as exc:
        exc.hint = exc.hint or f"list the runs with {LIST_RUNS}"
        raise


async def stream_logs(backend: NativeBackend, ref: UUID, *, follow: bool) -> FlowRun:
    """Print the run's log lines as ``stream line``; with ``follow``, until the run is terminal.

    The state is read before the logs each round, so once a terminal state is seen the logs
    read after it are complete (the agent ships every line before it reports the final state).
    """
    console = out()
    last: int | None = None
    while True:
        run = await get_run(backend, ref)
        while True:
            lines: list[LogLine] = await backend.get_logs(ref, after=last, limit=LOG_PAGE)
            for line in lines:
                console.print(
                    text(f"{line.stream.value} ", style=STREAM_STYLES.get(line.stream, ""))
                    + text(line.line),
                    soft_wrap=True,
                )
                last = line.id
            if len(lines) < LOG_PAGE:
                break
        if not follow or run.state.type.is_terminal:
            return run
        await asyncio.sleep(POLL_SECONDS)


def result_of(run: FlowRun) -> dict[str, Any]:
    """The flow's return value, as the server kept it (``runner_info``), shown on its own."""
    keys = ("result", "result_note")
    return {key: run.runner_info[key] for key in keys if key in run.runner_info}


def final_line(run: FlowRun) -> Text:
    line = text(f"flow run {run.name} ({run.id}) finished: ") + state_text(run.state.type)
    if run.state.message and run.state.message.lower() != run.state.type.value.lower():
        line += text(f": {run.state.message}")
    return line


def follow_run(ctx: typer.Context, ref: UUID) -> FlowRun:
    """Stream a run's logs until it is terminal; Ctrl-C stops watching, not the run."""

    async def run(backend: NativeBackend) -> FlowRun:
        return await stream_logs(backend, ref, follow=True)

    settings = settings_of(ctx)
    try:
        # A watch may outlive a server restart: ride it out like the agent does.
        return call(settings, run, retry_for=settings.startup_timeout_seconds)
    except KeyboardInterrupt:
        info(f"stopped following; the run goes on (cancel it with agent flow-run cancel {ref})")
        raise typer.Exit(130) from None


@app.command("ls")
def ls(
    ctx: typer.Context,
    queue: Annotated[
        str | None, typer.Option("--queue", "-q", help="Only this queue (UUID or name).")
    ] = None,
    deployment: Annotated[
        str | None,
        typer.Option("--deployment", "-d", help="Only this deployment (name or UUID)."),
    ] = None,
    state: Annotated[
        list[str] | None,
        typer.Option(
            "--state", "-s", help="Only runs in this state (repeatable).", show_default=False
        ),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="Most runs shown.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List flow runs, newest first."""
    states = parse_states(state or [])

    async def run(backend: NativeBackend) -> tuple[list[FlowRun], dict[UUID, str]]:
        queue_id = (await resolve_queue(backend, queue)).id if queue else None
        deployment_id = (await resolve_deployment(backend, deployment)).id if deployment else None
        runs = await backend.list_runs(
            work_queue_id=queue_id, deployment_id=deployment_id, states=states, limit=limit
        )
        agents = {a.id: a.name for a in await backend.list_agents()} if runs else {}
        return runs, agents

    settings = settings_of(ctx)
    runs, agents = call(settings, run)
    if as_json:
        print_documents(settings, [r.model_dump(mode="json") for r in runs])
        return
    rows = table("id", "name", "deployment", "state", "expected start", "agent")
    for r in runs:
        agent = agents.get(r.agent_id, str(r.agent_id)) if r.agent_id else "-"
        rows.add_row(
            str(r.id),
            r.name,
            r.deployment_name,
            run_state(r),
            when(r.expected_start_time),
            agent,
        )
    print_table(rows, "no flow runs match")


@app.command("inspect")
def inspect(ctx: typer.Context, ref: RunArg) -> None:
    """Print a run as JSON, with its full state history (secret-looking env values masked)."""
    rid = run_id(ref)

    async def run(backend: NativeBackend) -> dict[str, Any]:
        found = await get_run(backend, rid)
        history = await backend.run_states(rid)
        return (
            found.model_dump(mode="json")
            | result_of(found)
            | {"state_history": [s.model_dump(mode="json") for s in history]}
        )

    settings = settings_of(ctx)
    print_documents(settings, call(settings, run))


@app.command("logs")
def logs(
    ctx: typer.Context,
    ref: RunArg,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing until the run is terminal.")
    ] = False,
) -> None:
    """Print a run's log lines (stdout, stderr and the agent's notes about it)."""
    rid = run_id(ref)
    if follow:
        say(final_line(follow_run(ctx, rid)))
        return

    async def run(backend: NativeBackend) -> FlowRun:
        return await stream_logs(backend, rid, follow=False)

    call(settings_of(ctx), run)


@app.command("cancel")
def cancel(ctx: typer.Context, ref: RunArg) -> None:
    """Cancel a run: at once when it has not started, through its agent when it is running."""
    rid = run_id(ref)

    async def run(backend: NativeBackend) -> FlowRun:
        await get_run(backend, rid)
        return await backend.cancel_run(rid)

    cancelled = call(settings_of(ctx), run)
    say(text(f"flow run {cancelled.name} ({cancelled.id}): ") + state_text(cancelled.state.type))
    if cancelled.state.type is StateType.CANCELLING:
        info("its agent will interrupt it and report CANCELLED")


@app.command("retry")
def retry(ctx: typer.Context, ref: RunArg) -> None:
    """Schedule a FAILED, CRASHED or CANCELLED run again, as the next attempt of the same run."""
    rid = run_id(ref)

    async def run(backend: NativeBackend) -> FlowRun:
        await get_run(backend, rid)
        return await backend.retry_run(rid)

    retried = call(settings_of(ctx), run)
    say(
        text(f"flow run {retried.name} ({retried.id}): attempt {retried.attempt} ")
        + state_text(retried.state.type)
    )


@app.command("rerun")
def rerun(
    ctx: typer.Context,
    ref: RunArg,
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param", "-p", help="Parameter k=v over the old run's; v JSON if it can be."
        ),
    ] = None,
) -> None:
    """Start a new run of the same deployment with this run's parameters (and print its id)."""
    rid = run_id(ref)
    body = FlowRunRerun(parameters=parse_pairs(param or [], "--param"))

    async def run(backend: NativeBackend) -> FlowRun:
        await get_run(backend, rid)
        return await backend.rerun_run(rid, body)

    created = call(settings_of(ctx), run)
    typer.echo(str(created.id))
    info(f"scheduled flow run {created.name!r} of {created.deployment_name!r}, a rerun of {rid}")
