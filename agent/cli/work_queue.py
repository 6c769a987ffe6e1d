"""`agent work-queue …`: create, list, inspect, preview, pause, resume and delete queues."""

from __future__ import annotations

from typing import Annotated

import typer

from agent.backends.native import NativeBackend
from agent.cli.context import settings_of
from agent.cli.lookup import LIST_DEPLOYMENTS, resolve_queue
from agent.cli.output import (
    call,
    confirm,
    info,
    print_documents,
    print_json,
    print_table,
    run_state,
    say,
    table,
    when,
)
from agent.errors import Conflict
from agent.models import FlowRun, WorkQueue, WorkQueueCreate, WorkQueueUpdate

app = typer.Typer(
    help="Work queues: where deployments' runs wait for agents.", no_args_is_help=True
)

QueueArg = Annotated[str, typer.Argument(help="The queue's UUID or name.", show_default=False)]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


@app.command("create")
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="A unique name.")],
    tag: Annotated[
        list[str] | None,
        typer.Option(
            "--tag", "-t", help="Runs must carry this tag (repeatable).", show_default=False
        ),
    ] = None,
    concurrency_limit: Annotated[
        int | None,
        typer.Option(
            "--concurrency-limit", min=0, help="Most runs in flight at once.", show_default=False
        ),
    ] = None,
    paused: Annotated[bool, typer.Option("--paused", help="Create it paused.")] = False,
) -> None:
    """Create a work queue and print its UUID (alone on stdout, for Q=$(…))."""
    body = WorkQueueCreate(
        name=name, tags=list(tag or ()), concurrency_limit=concurrency_limit, paused=paused
    )

    async def run(backend: NativeBackend) -> WorkQueue:
        return await backend.create_queue(body)

    queue = call(settings_of(ctx), run)
    typer.echo(str(queue.id))
    info(f"created work queue {queue.name!r}" + (" (paused)" if queue.paused else ""))


@app.command("ls")
def ls(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """List the work queues."""

    async def run(backend: NativeBackend) -> list[WorkQueue]:
        return await backend.list_queues()

    queues = call(settings_of(ctx), run)
    if as_json:
        print_json([q.model_dump(mode="json") for q in queues])
        return
    rows = table("id", "name", "tags", "limit", "paused")
    for q in queues:
        limit = "-" if q.concurrency_limit is None else str(q.concurrency_limit)
        rows.add_row(str(q.id), q.name, ", ".join(q.tags), limit, "yes" if q.paused else "no")
    print_table(rows, "no work queues yet; create one with agent work-queue create NAME")


@app.command("inspect")
def inspect(ctx: typer.Context, queue: QueueArg) -> None:
    """Print a queue as JSON."""

    async def run(backend: NativeBackend) -> WorkQueue:
        return await resolve_queue(backend, queue)

    print_json(call(settings_of(ctx), run).model_dump(mode="json"))


@app.command("preview")
def preview(
    ctx: typer.Context,
    queue: QueueArg,
    hours: Annotated[float, typer.Option("--hours", min=0, help="How far ahead to look.")] = 1.0,
    as_json: JsonFlag = False,
) -> None:
    """Show the scheduled runs due on a queue within the next HOURS."""

    async def run(backend: NativeBackend) -> list[FlowRun]:
        found = await resolve_queue(backend, queue)
        return await backend.preview_queue(found.id, hours)

    settings = settings_of(ctx)
    runs = call(settings, run)
    if as_json:
        print_documents(settings, [r.model_dump(mode="json") for r in runs])
        return
    rows = table("id", "name", "deployment", "state", "expected start", "tags")
    for r in runs:
        rows.add_row(
            str(r.id),
            r.name,
            r.deployment_name,
            run_state(r),
            when(r.expected_start_time),
            ", ".join(r.tags),
        )
    print_table(rows, f"no runs due on {queue!r} within {hours:g} h")


def _set_paused(ctx: typer.Context, queue: str, paused: bool) -> None:
    async def run(backend: NativeBackend) -> WorkQueue:
        found = await resolve_queue(backend, queue)
        return await backend.update_queue(found.id, WorkQueueUpdate(paused=paused))

    updated = call(settings_of(ctx), run)
    say(f"work queue {updated.name!r} ({updated.id}) {'paused' if paused else 'resumed'}")


@app.command("pause")
def pause(ctx: typer.Context, queue: QueueArg) -> None:
    """Stop handing the queue's runs to agents (runs in flight go on)."""
    _set_paused(ctx, queue, True)


@app.command("resume")
def resume(ctx: typer.Context, queue: QueueArg) -> None:
    """Hand the queue's runs to agents again."""
    _set_paused(ctx, queue, False)


@app.command("delete")
def delete(
    ctx: typer.Context,
    queue: QueueArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete a work queue (it must have no deployments)."""
    settings = settings_of(ctx)

    async def find(backend: NativeBackend) -> WorkQueue:
        return await resolve_queue(backend, queue)

    found = call(settings, find)
    confirm(f"Delete work queue {found.name!r} ({found.id})?", yes)

    async def run(backend: NativeBackend) -> None:
        try:
            await backend.delete_queue(found.id)
        except Conflict as exc:
            exc.hint = exc.hint or f"delete its deployments first (see {LIST_DEPLOYMENTS})"
            raise

    call(settings, run)
    say(f"deleted work queue {found.name!r} ({found.id})")
