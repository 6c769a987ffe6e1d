"""`agent deployment …`: create (from flags or a YAML file), list, inspect, run and delete."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from agent.backends.native import NativeBackend
from agent.cli.context import settings_of
from agent.cli.entrypoints import check_entrypoint
from agent.cli.flow_run import final_line, follow_run
from agent.cli.lookup import queue_names, resolve_deployment, resolve_queue
from agent.cli.output import (
    call,
    confirm,
    info,
    print_documents,
    print_table,
    say,
    table,
    warn,
    when,
)
from agent.cli.parsing import (
    FLAG_NAMES,
    DeploymentLimits,
    DeploymentSpec,
    UploadSource,
    invalid_flags,
    load_deployment_file,
    parse_pairs,
    spec_from_flags,
)
from agent.cli.runner import check_runner_options
from agent.cli.schedule import describe, schedules_from_flags
from agent.errors import InputError
from agent.models import Deployment, DeploymentCreate, FlowRun, FlowRunCreate, StateType, WorkQueue
from agent.sources.bundle import pack
from runners.docker_config import outside_entrypoint

app = typer.Typer(help="Deployments: what to run, where, and how.", no_args_is_help=True)

SCHEDULE: dict[str, Any] = {"rich_help_panel": "Schedule (see agent deployment schedule)"}
SOURCE: dict[str, Any] = {"rich_help_panel": "Code from git (see docs/SOURCES.md)"}

NameArg = Annotated[
    str, typer.Argument(help="The deployment's name (or UUID).", show_default=False)
]


LIST_FLAGS = {"param": "--param", "option": "--runner-option", "env": "--env"}


def _warn_unmatched(tags: list[str], queue: WorkQueue, what: str) -> None:
    """A run must carry every tag of its queue's filter, or no agent of the queue takes it."""
    missing = [t for t in queue.tags if t not in tags]
    if missing:
        warn(
            f"no agent of work queue {queue.name!r} will take {what}: the queue requires "
            f"the tag(s) {', '.join(missing)}; add them with --tag"
        )


def _target(d: Deployment) -> str:
    return d.entrypoint if d.entrypoint is not None else " ".join(d.command or [])


def _flag_values(
    entrypoint: str | None,
    flags: dict[str, Any],
    param: list[str],
    option: list[str],
    env: list[str],
) -> dict[str, Any]:
    values = {k: v for k, v in flags.items() if v is not None}
    if entrypoint is not None:
        values["entrypoint"] = entrypoint
    values["parameters"] = parse_pairs(param, "--param")
    values["runner_options"] = parse_pairs(option, "--runner-option")
    values["env"] = parse_pairs(env, "--env", json_values=False)
    return values


def _specs(
    file: Path | None, entrypoint: str | None, flags: dict[str, Any], lists: dict[str, list[str]]
) -> list[tuple[DeploymentSpec, str]]:
    """The deployments to create, each with a label for messages; working_dir made absolute."""
    if file is None:
        if entrypoint is not None and flags.get("command") is not None:
            raise InputError("give an ENTRYPOINT or --command, not both")
        if entrypoint is None and flags.get("command") is None:
            raise InputError(
                "nothing to run: give an ENTRYPOINT (path/to/file.py:func) or --command",
                hint="or describe the deployment in a file: --file deployment.yaml",
            )
        given_dir = flags.pop("working_dir")
        values = _flag_values(entrypoint, flags, lists["param"], lists["option"], lists["env"])
        if values.get("source") is None:
            # Without a source the code is here: the agent finds it at this absolute path.
            values["working_dir"] = str(Path(given_dir or ".").resolve())
        elif given_dir is not None:
            flag = "--upload" if "upload" in values["source"] else "--git"
            raise InputError(
                f"--workdir and {flag} do not go together: the run works in its own copy",
                hint="with --git, --path names a directory inside the repository",
            )
        spec = spec_from_flags(values)
        return [(spec, f"deployment {spec.name!r}")]
    given = [FLAG_NAMES[k] for k, v in flags.items() if v is not None and k != "queue"]
    given += [LIST_FLAGS[k] for k, v in lists.items() if v]
    if entrypoint is not None:
        given.insert(0, "ENTRYPOINT")
    if given:
        raise InputError(
            f"--file describes the whole deployment; do not combine it with {', '.join(given)}",
            hint="--queue may be given as the queue of entries that have none",
        )
    result = []
    for entry in load_deployment_file(file):
        spec = entry.spec
        if spec.source is None:
            workdir = file.parent / (spec.working_dir or ".")
            spec = spec.model_copy(update={"working_dir": str(workdir.resolve())})
        elif isinstance(spec.source, UploadSource):  # relative to the file, like working_dir
            upload = UploadSource(upload=str((file.parent / spec.source.upload).resolve()))
            spec = spec.model_copy(update={"source": upload})
        if spec.queue is None and flags.get("queue") is None:
            raise InputError(f"{entry.where}: no queue: add a 'queue' field or pass --queue")
        result.append((spec, entry.where))
    return result


def _source_flags(
    git: str | None, ref: str | None, path: str | None, token_env: str | None, upload: Path | None
) -> dict[str, Any] | None:
    if upload is not None:
        if git is not None:
            raise InputError("give --git or --upload, not both")
        return {"upload": str(upload.resolve())}
    if git is None:
        others = [
            flag for flag, v in (("--ref", ref), ("--path", path), ("--token-env", token_env)) if v
        ]
        if others:
            raise InputError(f"{', '.join(others)} go with --git URL", hint="add --git URL")
        return None
    given = {"git": git, "ref": ref, "path": path, "token_env": token_env}
    return {k: v for k, v in given.items() if v is not None}


async def _upload(backend: NativeBackend, directory: Path) -> str:
    data = pack(directory)
    bundle = await backend.upload_bundle(data)
    stored = "uploaded" if bundle.created else "already on the server"
    info(f"bundle {bundle.digest} ({bundle.size:,} bytes) of {directory}: {stored}")
    return bundle.digest


def _check_locally(spec: DeploymentSpec, where: str | None) -> None:
    """What can be known here: the working directory, the entrypoint, the runner's options."""
    try:
        if isinstance(spec.source, UploadSource):  # the code is here, to be uploaded
            directory = Path(spec.source.upload)
            if not directory.is_dir():
                raise InputError(f"--upload {str(directory)!r} is not a directory")
            if spec.entrypoint is not None:
                check_entrypoint(spec.entrypoint, directory)
            check_runner_options(spec.runner, spec.runner_options)
            return
        if spec.source is not None:  # the code is in the repository, not here
            check_runner_options(spec.runner, spec.runner_options)
            return
        workdir = Path(spec.working_dir or ".")
        if not workdir.is_dir():
            raise InputError(
                f"working directory {str(workdir)!r} does not exist",
                hint="pass --no-check if it exists only where the agent runs",
            )
        if spec.entrypoint is not None:
            check_entrypoint(spec.entrypoint, workdir)
        if spec.runner == "docker" and spec.runner_options.get("mount_working_dir", True):
            outside = outside_entrypoint(spec.entrypoint, workdir.resolve())
            if outside is not None:
                raise InputError(outside)
        check_runner_options(spec.runner, spec.runner_options)
    except InputError as exc:
        if where is not None:
            exc.message = f"{where}: {exc.message}"
        raise


@app.command("create")
def create(
    ctx: typer.Context,
    entrypoint: Annotated[
        str | None,
        typer.Argument(help="path/to/file.py:func or package.module:func.", show_default=False),
    ] = None,
    name: Annotated[str | None, typer.Option("--name", "-n", help="Unique name.")] = None,
    queue: Annotated[
        str | None, typer.Option("--queue", "-q", help="Work queue (UUID or name).")
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", help="Default parameter k=v; v parsed as JSON if it can be."),
    ] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", "-t", help="Tag for its runs.")] = None,
    runner: Annotated[
        str | None, typer.Option("--runner", help="Runner name (default subprocess).")
    ] = None,
    runner_option: Annotated[
        list[str] | None, typer.Option("--runner-option", help="Runner option k=v (JSON values).")
    ] = None,
    env: Annotated[list[str] | None, typer.Option("--env", "-e", help="Env var K=V.")] = None,
    workdir: Annotated[
        Path | None, typer.Option("--workdir", help="Working directory (default: here).")
    ] = None,
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="Fail a run after this many seconds.")
    ] = None,
    retries: Annotated[
        int | None, typer.Option("--retries", help="Retries of a failed run.")
    ] = None,
    retry_delay: Annotated[
        float | None, typer.Option("--retry-delay", help="Seconds before a retry.")
    ] = None,
    command: Annotated[
        str | None, typer.Option("--command", help='An argv to run instead: "prog arg …".')
    ] = None,
    concurrency_limit: Annotated[
        int | None,
        typer.Option(
            "--concurrency-limit", help="At most N of its runs at once (claimed or running)."
        ),
    ] = None,
    collision: Annotated[
        str | None,
        typer.Option(
            "--collision",
            help="A run over the limit: enqueue (waits for a slot, the default) or cancel-new.",
        ),
    ] = None,
    file: Annotated[
        Path | None, typer.Option("--file", "-f", help="YAML file with one or more deployments.")
    ] = None,
    no_check: Annotated[
        bool, typer.Option("--no-check", help="Do not check the entrypoint exists here.")
    ] = False,
    cron: Annotated[
        str | None, typer.Option("--cron", help='E.g. "0 * * * *".', **SCHEDULE)
    ] = None,
    interval: Annotated[
        str | None, typer.Option("--interval", help="Every 30s, 15m, 2h, 1d.", **SCHEDULE)
    ] = None,
    at: Annotated[
        str | None, typer.Option("--at", help="Once, at an ISO time.", **SCHEDULE)
    ] = None,
    timezone: Annotated[
        str | None, typer.Option("--timezone", help="IANA zone (default UTC).", **SCHEDULE)
    ] = None,
    anchor: Annotated[
        str | None, typer.Option("--anchor", help="--interval's first time.", **SCHEDULE)
    ] = None,
    catchup: Annotated[
        str | None, typer.Option("--catchup", help="After downtime: one or none.", **SCHEDULE)
    ] = None,
    git: Annotated[
        str | None,
        typer.Option("--git", help="Repository URL: agents fetch the code from it.", **SOURCE),
    ] = None,
    ref: Annotated[
        str | None,
        typer.Option("--ref", help="Branch, tag or commit (default: HEAD).", **SOURCE),
    ] = None,
    path: Annotated[
        str | None,
        typer.Option("--path", help="Directory in the repository to run in.", **SOURCE),
    ] = None,
    token_env: Annotated[
        str | None,
        typer.Option(
            "--token-env", help="Agent env var holding an https token (its NAME).", **SOURCE
        ),
    ] = None,
    upload: Annotated[
        Path | None,
        typer.Option(
            "--upload",
            help="Pack this directory (minus .flowagentignore) and upload it to the server.",
            rich_help_panel="Code uploaded to the server",
        ),
    ] = None,
) -> None:
    """Create (or update, by name) a deployment and print its id."""
    flags: dict[str, Any] = {
        "name": name,
        "queue": queue,
        "tags": tag or None,
        "runner": runner,
        "working_dir": workdir,
        "timeout_seconds": timeout,
        "retries": retries,
        "retry_delay_seconds": retry_delay,
        "command": command,
        "concurrency_limit": concurrency_limit,
        "collision_strategy": collision,
        "schedules": schedules_from_flags(
            cron=cron, interval=interval, at=at, timezone=timezone, anchor=anchor, catchup=catchup
        ),
        "source": _source_flags(git, ref, path, token_env, upload),
    }
    lists = {"param": param or [], "option": runner_option or [], "env": env or []}
    if file is None:
        for required in ("name", "queue"):
            if flags[required] is None:
                raise InputError(
                    f"missing --{required}",
                    hint="see agent deployment create --help, or use --file deployment.yaml",
                )
    specs = _specs(file, entrypoint, flags, lists)
    if not no_check:
        for spec, where in specs:
            _check_locally(spec, where if file else None)

    async def run(backend: NativeBackend) -> list[tuple[Deployment, WorkQueue]]:
        queues: dict[str, WorkQueue] = {}
        done = []
        for spec, _ in specs:
            ref = spec.queue or queue or ""
            if ref not in queues:
                queues[ref] = await resolve_queue(backend, ref)
            fields = spec.model_dump(exclude={"queue"})
            if isinstance(spec.source, UploadSource):
                fields["source"] = {"bundle": await _upload(backend, Path(spec.source.upload))}
            body = DeploymentCreate(work_queue_id=queues[ref].id, **fields)
            done.append((await backend.create_deployment(body), queues[ref]))
        return done

    for deployment, work_queue in call(settings_of(ctx), run):
        typer.echo(str(deployment.id))
        verb = "created" if deployment.created == deployment.updated else "updated"
        info(f"{verb} deployment {deployment.name!r} on work queue {work_queue.name!r}")
        for schedule in deployment.schedules:
            info(f"  schedule {describe(schedule)}; next run {when(schedule.next_run_time)}")
        _warn_unmatched(deployment.tags, work_queue, "runs of this deployment")


@app.command("ls")
def ls(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List the deployments."""

    async def run(backend: NativeBackend) -> tuple[list[Deployment], dict[Any, str]]:
        return await backend.list_deployments(), await queue_names(backend)

    settings = settings_of(ctx)
    deployments, names = call(settings, run)
    if as_json:
        print_documents(settings, [d.model_dump(mode="json") for d in deployments])
        return
    rows = table("name", "id", "queue", "entrypoint / command", "runner", "tags", "limit")
    for d in deployments:
        queue = names.get(d.work_queue_id, str(d.work_queue_id))
        runner = d.runner or "(agent's default)"
        rows.add_row(d.name, str(d.id), queue, _target(d), runner, ", ".join(d.tags), _limit(d))
    print_table(rows, "no deployments yet; create one with agent deployment create")


def _limit(d: Deployment) -> str:
    if d.concurrency_limit is None:
        return "-"
    return f"{d.concurrency_limit} ({d.collision_strategy.value})"


@app.command("update")
def update(
    ctx: typer.Context,
    name: NameArg,
    concurrency_limit: Annotated[
        int | None,
        typer.Option(
            "--concurrency-limit", help="At most N of its runs at once (claimed or running)."
        ),
    ] = None,
    no_concurrency_limit: Annotated[
        bool, typer.Option("--no-concurrency-limit", help="Lift the limit.")
    ] = False,
    collision: Annotated[
        str | None,
        typer.Option("--collision", help="A run over the limit: enqueue or cancel-new."),
    ] = None,
) -> None:
    """Change a deployment's concurrency limit; everything else stays as it is.

    A lowered limit binds the next claim (runs already going are not stopped); a raised one
    lets waiting runs go at once.
    """
    if no_concurrency_limit and concurrency_limit is not None:
        raise InputError("give --concurrency-limit N or --no-concurrency-limit, not both")
    if not no_concurrency_limit and concurrency_limit is None and collision is None:
        raise InputError(
            "nothing to update: give --concurrency-limit N, --no-concurrency-limit or "
            "--collision enqueue|cancel-new"
        )
    changes: dict[str, Any] = {}
    if concurrency_limit is not None or no_concurrency_limit:
        changes["concurrency_limit"] = concurrency_limit
    if collision is not None:
        changes["collision_strategy"] = collision
    try:
        checked = DeploymentLimits.model_validate(changes)
    except ValidationError as exc:
        raise InputError(
            invalid_flags(exc, "invalid deployment"), hint="see agent deployment update --help"
        ) from None

    async def run(backend: NativeBackend) -> Deployment:
        found = await resolve_deployment(backend, name)
        fields = found.model_dump(
            include=set(DeploymentCreate.model_fields) - {"schedules"}
        ) | checked.model_dump(include=set(changes))
        return await backend.create_deployment(DeploymentCreate.model_validate(fields))

    updated = call(settings_of(ctx), run)
    say(f"deployment {updated.name!r}: concurrency limit {_limit(updated)}")


@app.command("inspect")
def inspect(ctx: typer.Context, name: NameArg) -> None:
    """Print a deployment as JSON (secret-looking env values masked)."""

    async def run(backend: NativeBackend) -> Deployment:
        return await resolve_deployment(backend, name)

    settings = settings_of(ctx)
    print_documents(settings, call(settings, run).model_dump(mode="json"))


@app.command("run")
def run_deployment(
    ctx: typer.Context,
    name: NameArg,
    param: Annotated[
        list[str] | None, typer.Option("--param", "-p", help="Parameter k=v over the defaults.")
    ] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", "-t", help="Extra tag.")] = None,
    env: Annotated[list[str] | None, typer.Option("--env", "-e", help="Env var K=V.")] = None,
    watch: Annotated[
        bool,
        typer.Option("--watch", "-w", help="Stream the logs; exit 0 only if it COMPLETED."),
    ] = False,
) -> None:
    """Schedule a run now and print its id."""
    body = FlowRunCreate(
        parameters=parse_pairs(param or [], "--param"),
        tags=list(tag or ()),
        env=parse_pairs(env or [], "--env", json_values=False),
    )

    async def run(backend: NativeBackend) -> tuple[FlowRun, WorkQueue]:
        deployment = await resolve_deployment(backend, name)
        created = await backend.create_run(deployment.id, body)
        return created, await backend.get_queue(deployment.work_queue_id)

    created, queue = call(settings_of(ctx), run)
    typer.echo(str(created.id))
    info(f"scheduled flow run {created.name!r} of {created.deployment_name!r}")
    _warn_unmatched(created.tags, queue, "this run")
    if queue.paused:
        warn(f"work queue {queue.name!r} is paused: no agent takes the run until it is resumed")
    if watch:
        finished = follow_run(ctx, created.id)
        say(final_line(finished))
        raise typer.Exit(0 if finished.state.type is StateType.COMPLETED else 1)


@app.command("delete")
def delete(
    ctx: typer.Context,
    name: NameArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete a deployment; its runs that have not been claimed yet are cancelled."""
    settings = settings_of(ctx)

    async def find(backend: NativeBackend) -> Deployment:
        return await resolve_deployment(backend, name)

    found = call(settings, find)
    confirm(f"Delete deployment {found.name!r} ({found.id}) and cancel its scheduled runs?", yes)

    async def run(backend: NativeBackend) -> None:
        await backend.delete_deployment(found.id)

    call(settings, run)
    say(f"deleted deployment {found.name!r} ({found.id})")
