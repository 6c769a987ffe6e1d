"""`agent concurrency-limit …`: limits on the runs carrying a tag, across deployments and queues."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

import typer

from agent.backends.native import NativeBackend
from agent.cli.context import settings_of
from agent.cli.output import call, confirm, info, print_json, print_table, say, table, warn
from agent.cli.parsing import looks_like_uuid
from agent.errors import InputError, NotFound
from agent.models import ConcurrencyLimit, ConcurrencyLimitCreate, ConcurrencyLimitUpdate

app = typer.Typer(
    help="Tag concurrency limits: at most N runs carrying a tag at once, whatever their "
    "deployment or queue.",
    no_args_is_help=True,
)

LIST_LIMITS = "agent concurrency-limit ls"
LimitArg = Annotated[str, typer.Argument(help="The limit's name or UUID.", show_default=False)]
LimitOption = Annotated[
    int | None,
    typer.Option("--limit", "-l", help="Most runs with the tag at once.", show_default=False),
]


def _check_limit(limit: int | None) -> int:
    if limit is None:
        raise InputError("missing --limit: the most runs with the tag at once (1 or more)")
    if limit < 1:
        raise InputError(
            f"--limit must be 1 or more (got {limit})",
            hint="to hold every run with the tag back, pause their queues; to lift the limit, "
            "delete it",
        )
    return limit


async def _resolve(backend: NativeBackend, ref: str) -> ConcurrencyLimit:
    try:
        if looks_like_uuid(ref):
            return await backend.get_limit(UUID(ref))
        return await backend.get_limit_by_name(ref)
    except NotFound as exc:
        raise NotFound(
            f"no concurrency limit {ref!r}", status_code=404, hint=f"list them with {LIST_LIMITS}"
        ) from exc


@app.command("create")
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="A unique name.", show_default=False)],
    tag: Annotated[
        str | None,
        typer.Option("--tag", "-t", help="The tag whose runs it counts.", show_default=False),
    ] = None,
    limit: LimitOption = None,
) -> None:
    """Limit the runs carrying a tag (a run with several limited tags needs a slot of each)."""
    if tag is None or not tag.strip():
        raise InputError(
            "missing --tag: the tag whose runs this limit counts",
            hint="a run carries its deployment's tags and the tags given when it was made",
        )
    body = ConcurrencyLimitCreate(name=name, tag=tag, limit=_check_limit(limit))

    async def run(backend: NativeBackend) -> tuple[ConcurrencyLimit, bool]:
        created = await backend.create_limit(body)
        used = any(tag in d.tags for d in await backend.list_deployments())
        return created, used

    created, used = call(settings_of(ctx), run)
    typer.echo(str(created.id))
    info(f"created concurrency limit {created.name!r}: at most {created.limit} runs tagged {tag!r}")
    if not used:
        warn(
            f"no deployment carries the tag {tag!r} yet: the limit counts only runs that do "
            "(add it with agent deployment create … --tag, or to a run with --tag)"
        )


def _slots(found: ConcurrencyLimit) -> str:
    return f"{len(found.active_run_ids)}/{found.limit}"


@app.command("ls")
def ls(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List the limits, with how many of their slots are taken."""

    async def run(backend: NativeBackend) -> list[ConcurrencyLimit]:
        return await backend.list_limits()

    limits = call(settings_of(ctx), run)
    if as_json:
        print_json([found.model_dump(mode="json") for found in limits])
        return
    rows = table("name", "id", "tag", "limit", "slots taken")
    for found in limits:
        rows.add_row(found.name, str(found.id), found.tag, str(found.limit), _slots(found))
    print_table(rows, "no concurrency limits; create one with agent concurrency-limit create")


@app.command("inspect")
def inspect(ctx: typer.Context, ref: LimitArg) -> None:
    """Print a limit as JSON, with the runs holding its slots (active_run_ids)."""

    async def run(backend: NativeBackend) -> ConcurrencyLimit:
        return await _resolve(backend, ref)

    print_json(call(settings_of(ctx), run).model_dump(mode="json"))


@app.command("update")
def update(ctx: typer.Context, ref: LimitArg, limit: LimitOption = None) -> None:
    """Change a limit: a lower one binds the next claim (runs going on are not stopped), a
    higher one lets waiting runs go at once."""
    body = ConcurrencyLimitUpdate(limit=_check_limit(limit))

    async def run(backend: NativeBackend) -> ConcurrencyLimit:
        return await backend.update_limit((await _resolve(backend, ref)).id, body)

    updated = call(settings_of(ctx), run)
    say(f"concurrency limit {updated.name!r}: {_slots(updated)} slots taken")


@app.command("delete")
def delete(
    ctx: typer.Context,
    ref: LimitArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete a limit: runs waiting on it go as soon as agents have slots."""
    settings = settings_of(ctx)

    async def find(backend: NativeBackend) -> ConcurrencyLimit:
        return await _resolve(backend, ref)

    found = call(settings, find)
    confirm(f"Delete concurrency limit {found.name!r} (tag {found.tag!r})?", yes)

    async def run(backend: NativeBackend) -> None:
        await backend.delete_limit(found.id)

    call(settings, run)
    say(f"deleted concurrency limit {found.name!r} ({found.id})")
