"""`agent deployment schedule …`: list, add, pause, resume and delete a deployment's schedules.

Also the schedule flags of `agent deployment create` (``--cron``, ``--interval``, ``--at``,
``--timezone``, ``--anchor``, ``--catchup``), turned into wire models by
:func:`schedules_from_flags`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import typer
from pydantic import TypeAdapter, ValidationError

from agent.backends.native import NativeBackend
from agent.cli.context import settings_of
from agent.cli.lookup import resolve_deployment
from agent.cli.output import call, confirm, print_json, print_table, say, table, text, when
from agent.cli.parsing import invalid_input, looks_like_uuid
from agent.errors import InputError, NotFound
from agent.models import Catchup, Schedule, ScheduleCreate, ScheduleKind, ScheduleUpdate

app = typer.Typer(help="A deployment's schedules: cron, interval or one-off.", no_args_is_help=True)

RefArg = Annotated[
    str,
    typer.Argument(
        help="A schedule's UUID, or a deployment (name or UUID) for all of its schedules.",
        show_default=False,
    ),
]
_SCHEDULES = TypeAdapter(list[Schedule])


# --------------------------------------------------------------------------- flags → models


def _moment(value: str, flag: str, timezone: str | None) -> datetime:
    """An ISO 8601 time; without an offset it is read in ``--timezone`` (else local time)."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InputError(
            f"{flag} {value!r} is not a time", hint="use ISO 8601, e.g. 2025-01-31T09:00"
        ) from None
    if moment.tzinfo is None:
        if timezone is not None:
            return moment.replace(tzinfo=ZoneInfo(timezone))
        return moment.astimezone()  # the machine's local time zone
    return moment


def schedules_from_flags(
    *,
    cron: str | None,
    interval: str | None,
    at: str | None,
    timezone: str | None,
    anchor: str | None,
    catchup: str | None,
) -> list[ScheduleCreate] | None:
    """The schedule the flags describe, or None when they describe none."""
    kinds = [
        flag for flag, value in (("--cron", cron), ("--interval", interval), ("--at", at)) if value
    ]
    if not kinds:
        extra = [
            f
            for f, v in (("--timezone", timezone), ("--anchor", anchor), ("--catchup", catchup))
            if v
        ]
        if extra:
            raise InputError(
                f"{', '.join(extra)} without a schedule", hint="add --cron, --interval or --at"
            )
        return None
    if len(kinds) > 1:
        raise InputError(f"give one of {', '.join(kinds)}, not several")
    if anchor is not None and interval is None:
        raise InputError("--anchor goes with --interval")
    fields: dict[str, Any] = {"cron": cron, "interval_seconds": interval}
    if catchup is not None:
        if catchup.lower() not in {c.value for c in Catchup}:
            raise InputError(f"--catchup {catchup!r}: use one or none")
        fields["catchup"] = Catchup(catchup.lower())
    if timezone is not None:
        try:
            ZoneInfo(timezone)
        except (ValueError, ZoneInfoNotFoundError):
            raise InputError(
                f"--timezone {timezone!r}: no such time zone",
                hint="use an IANA name, e.g. Europe/Paris or UTC",
            ) from None
        fields["timezone"] = timezone
    if at is not None:
        fields["at"] = _moment(at, "--at", timezone)
    if anchor is not None:
        fields["anchor"] = _moment(anchor, "--anchor", timezone)
    try:
        return [ScheduleCreate(**fields)]
    except ValidationError as exc:
        raise InputError(invalid_input(exc)) from None


def describe(schedule: ScheduleCreate) -> str:
    """``cron 0 * * * * (Europe/Paris)`` / ``every 15m`` / ``once at 2025-01-31 09:00:00``."""
    if schedule.kind is ScheduleKind.CRON:
        zone = "" if schedule.timezone == "UTC" else f" ({schedule.timezone})"
        return f"cron {schedule.cron}{zone}"
    if schedule.kind is ScheduleKind.INTERVAL:
        assert schedule.interval_seconds is not None
        text = f"every {_duration(schedule.interval_seconds)}"
        return text + (f" from {when(schedule.anchor)}" if schedule.anchor else "")
    return f"once at {when(schedule.at)}"


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


# --------------------------------------------------------------------------- API calls


async def _list(backend: NativeBackend, deployment_id: UUID | None = None) -> list[Schedule]:
    params = {} if deployment_id is None else {"deployment_id": str(deployment_id)}
    response = await backend.http.request("GET", "schedules", params=params)
    return _SCHEDULES.validate_python(response.json())


async def _resolve(backend: NativeBackend, ref: str) -> list[Schedule]:
    """The schedule with that id, or every schedule of the deployment named ``ref``."""
    if looks_like_uuid(ref):
        try:
            response = await backend.http.request("GET", f"schedules/{ref}")
            return [Schedule.model_validate(response.json())]
        except NotFound:
            pass
    deployment = await resolve_deployment(backend, ref)
    found = await _list(backend, deployment.id)
    if not found:
        raise NotFound(
            f"deployment {deployment.name!r} has no schedules",
            status_code=404,
            hint=f"add one with agent deployment schedule add {deployment.name} --cron …",
        )
    return found


def _print(schedules: list[Schedule], as_json: bool) -> None:
    if as_json:
        print_json([s.model_dump(mode="json") for s in schedules])
        return
    rows = table("id", "deployment", "schedule", "state", "catchup", "next run")
    for s in schedules:
        state = text("active", style="green") if s.active else text("paused", style="yellow")
        rows.add_row(
            str(s.id), s.deployment_name, describe(s), state, s.catchup.value, when(s.next_run_time)
        )
    print_table(
        rows, "no schedules; add one with agent deployment schedule add DEPLOYMENT --cron …"
    )


# --------------------------------------------------------------------------- commands


@app.command("ls")
def ls(
    ctx: typer.Context,
    deployment: Annotated[
        str | None, typer.Argument(help="Only this deployment's (name or UUID).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List schedules (all, or one deployment's) with their next run time."""

    async def run(backend: NativeBackend) -> list[Schedule]:
        if deployment is None:
            return await _list(backend)
        return await _list(backend, (await resolve_deployment(backend, deployment)).id)

    _print(call(settings_of(ctx), run), as_json)


@app.command("add")
def add(
    ctx: typer.Context,
    deployment: Annotated[str, typer.Argument(help="The deployment (name or UUID).")],
    cron: Annotated[str | None, typer.Option("--cron", help='Cron, e.g. "0 * * * *".')] = None,
    interval: Annotated[
        str | None, typer.Option("--interval", help="Every 30s, 15m, 2h, 1d (or seconds).")
    ] = None,
    at: Annotated[str | None, typer.Option("--at", help="Once, at this ISO time.")] = None,
    timezone: Annotated[
        str | None, typer.Option("--timezone", help="IANA zone for --cron (default UTC).")
    ] = None,
    anchor: Annotated[
        str | None, typer.Option("--anchor", help="--interval: runs at anchor + k * interval.")
    ] = None,
    catchup: Annotated[
        str | None, typer.Option("--catchup", help="After downtime: one (default) or none.")
    ] = None,
) -> None:
    """Add a schedule to a deployment and print its id."""
    found = schedules_from_flags(
        cron=cron, interval=interval, at=at, timezone=timezone, anchor=anchor, catchup=catchup
    )
    if found is None:
        raise InputError("no schedule given", hint="pass --cron, --interval or --at")

    async def run(backend: NativeBackend) -> Schedule:
        target = await resolve_deployment(backend, deployment)
        response = await backend.http.request(
            "POST",
            f"deployments/{target.id}/schedules",
            json=found[0].model_dump(mode="json", exclude_unset=True),
            retry=False,
        )
        return Schedule.model_validate(response.json())

    schedule = call(settings_of(ctx), run)
    typer.echo(str(schedule.id))
    say(
        f"{schedule.deployment_name}: {describe(schedule)}; next run {when(schedule.next_run_time)}"
    )


def _set_active(ctx: typer.Context, ref: str, active: bool) -> None:
    async def run(backend: NativeBackend) -> list[Schedule]:
        changed = []
        for schedule in await _resolve(backend, ref):
            body = ScheduleUpdate(active=active).model_dump(mode="json", exclude_unset=True)
            response = await backend.http.request("PATCH", f"schedules/{schedule.id}", json=body)
            changed.append(Schedule.model_validate(response.json()))
        return changed

    for schedule in call(settings_of(ctx), run):
        verb = "resumed" if active else "paused"
        say(f"{verb} {schedule.deployment_name}: {describe(schedule)} ({schedule.id})")


@app.command("pause")
def pause(ctx: typer.Context, ref: RefArg) -> None:
    """Pause: no more runs; its runs made ahead that have not started are removed."""
    _set_active(ctx, ref, False)


@app.command("resume")
def resume(ctx: typer.Context, ref: RefArg) -> None:
    """Resume from now on (the paused time is not caught up)."""
    _set_active(ctx, ref, True)


@app.command("delete")
def delete(
    ctx: typer.Context,
    ref: RefArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete schedules and their runs that have not started."""
    settings = settings_of(ctx)

    async def find(backend: NativeBackend) -> list[Schedule]:
        return await _resolve(backend, ref)

    found = call(settings, find)
    shown = "; ".join(f"{s.deployment_name}: {describe(s)}" for s in found)
    confirm(f"Delete {len(found)} schedule(s) ({shown})?", yes)

    async def run(backend: NativeBackend) -> None:
        for schedule in found:
            await backend.http.request("DELETE", f"schedules/{schedule.id}")

    call(settings, run)
    for schedule in found:
        say(f"deleted {schedule.deployment_name}: {describe(schedule)} ({schedule.id})")
