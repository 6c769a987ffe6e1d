"""`agent notification …`: webhooks the server calls when runs fail (or agents go OFFLINE)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated
from uuid import UUID

import typer
from pydantic import TypeAdapter

from agent.backends.native import NativeBackend
from agent.cli.context import settings_of
from agent.cli.lookup import resolve_deployment, resolve_queue
from agent.cli.output import age, call, confirm, info, print_json, print_table, say, table, text
from agent.cli.parsing import looks_like_uuid
from agent.errors import InputError, NotFound
from agent.models import (
    NOTIFICATION_EVENTS,
    DeliveryStatus,
    Notification,
    NotificationCreate,
    NotificationDelivery,
)

app = typer.Typer(
    help="Notifications: webhooks called when runs reach chosen states or agents go OFFLINE.",
    no_args_is_help=True,
)

if TYPE_CHECKING:
    from rich.text import Text

RefArg = Annotated[str, typer.Argument(help="The notification's name or UUID.", show_default=False)]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
LIST_NOTIFICATIONS = "agent notification ls"
_NOTIFICATIONS = TypeAdapter(list[Notification])
_DELIVERIES = TypeAdapter(list[NotificationDelivery])
STATUS_STYLES = {
    DeliveryStatus.DELIVERED: "green",
    DeliveryStatus.FAILED: "red",
    DeliveryStatus.PENDING: "yellow",
}


def parse_events(values: list[str]) -> list[str]:
    events = [part.strip().upper() for value in values for part in value.split(",") if part.strip()]
    unknown = [event for event in events if event not in NOTIFICATION_EVENTS]
    if unknown:
        raise InputError(
            f"--on {', '.join(unknown)}: no such event",
            hint="events: " + ", ".join(NOTIFICATION_EVENTS),
        )
    if not events:
        raise InputError("--on needs at least one event", hint="e.g. --on FAILED,CRASHED")
    return events


async def _resolve(backend: NativeBackend, ref: str) -> Notification:
    try:
        path = f"notifications/{ref}" if looks_like_uuid(ref) else f"notifications/name/{ref}"
        response = await backend.http.request("GET", path)
    except NotFound as exc:
        raise NotFound(
            f"no notification {ref!r}",
            status_code=404,
            hint=f"list them with {LIST_NOTIFICATIONS}",
        ) from exc
    return Notification.model_validate(response.json())


def last_result(delivery: NotificationDelivery | None) -> Text:
    """``DELIVERED (HTTP 200, 3 attempts) 2m ago`` and the like."""
    if delivery is None:
        return text("-")
    result = text(delivery.status.value, style=STATUS_STYLES.get(delivery.status, ""))
    detail = [f"HTTP {delivery.last_status_code}"] if delivery.last_status_code else []
    detail.append(f"{delivery.attempts} attempt{'s' if delivery.attempts != 1 else ''}")
    result += text(f" {delivery.event} ({', '.join(detail)}) {age(delivery.created)}")
    if delivery.status is not DeliveryStatus.DELIVERED and delivery.last_error:
        result += text(f": {delivery.last_error}", style="dim")
    return result


def _scope(n: Notification, queues: dict[UUID, str], deployments: dict[UUID, str]) -> str:
    parts = []
    if n.deployment_id is not None:
        parts.append(f"deployment {deployments.get(n.deployment_id, str(n.deployment_id))}")
    if n.work_queue_id is not None:
        parts.append(f"queue {queues.get(n.work_queue_id, str(n.work_queue_id))}")
    if n.tag is not None:
        parts.append(f"tag {n.tag}")
    return ", ".join(parts) or "all"


@app.command("create")
def create(
    ctx: typer.Context,
    on: Annotated[
        list[str],
        typer.Option(
            "--on",
            help=f"Events, comma-separated or repeated: {', '.join(NOTIFICATION_EVENTS)}.",
            show_default=False,
        ),
    ],
    webhook: Annotated[
        str, typer.Option("--webhook", help="URL the server POSTs JSON to.", show_default=False)
    ],
    deployment: Annotated[
        str | None, typer.Option("--deployment", "-d", help="Only runs of this deployment.")
    ] = None,
    queue: Annotated[
        str | None, typer.Option("--queue", "-q", help="Only this queue's runs and agents.")
    ] = None,
    tag: Annotated[str | None, typer.Option("--tag", "-t", help="Only runs with this tag.")] = None,
    secret: Annotated[
        str | None,
        typer.Option("--secret", help="Sign bodies: X-Flowagent-Signature: sha256=<HMAC hex>."),
    ] = None,
    name: Annotated[str | None, typer.Option("--name", "-n", help="Unique name.")] = None,
) -> None:
    """Create a notification and print its id. Filters given must all match."""
    events = parse_events(on)

    async def run(backend: NativeBackend) -> Notification:
        body = NotificationCreate(
            name=name,
            on=events,
            deployment_id=(await resolve_deployment(backend, deployment)).id
            if deployment
            else None,
            work_queue_id=(await resolve_queue(backend, queue)).id if queue else None,
            tag=tag,
            webhook_url=webhook,
            secret=secret,
        )
        response = await backend.http.request(
            "POST", "notifications", json=body.model_dump(mode="json"), retry=False
        )
        return Notification.model_validate(response.json())

    created = call(settings_of(ctx), run)
    typer.echo(str(created.id))
    info(f"created notification {created.name!r}: {', '.join(created.on)} → {created.webhook_url}")


@app.command("ls")
def ls(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """List notifications with the result of their last delivery."""

    async def run(
        backend: NativeBackend,
    ) -> tuple[list[Notification], dict[UUID, str], dict[UUID, str]]:
        response = await backend.http.request("GET", "notifications")
        found = _NOTIFICATIONS.validate_python(response.json())
        queues = {q.id: q.name for q in await backend.list_queues()} if found else {}
        deployments = {d.id: d.name for d in await backend.list_deployments()} if found else {}
        return found, queues, deployments

    found, queues, deployments = call(settings_of(ctx), run)
    if as_json:
        print_json([n.model_dump(mode="json") for n in found])
        return
    rows = table("name", "id", "on", "for", "webhook", "last delivery")
    for n in found:
        signed = " (signed)" if n.has_secret else ""
        rows.add_row(
            n.name,
            str(n.id),
            ",".join(n.on),
            _scope(n, queues, deployments),
            n.webhook_url + signed,
            last_result(n.last_delivery),
        )
    print_table(rows, "no notifications; create one with agent notification create --on FAILED …")


@app.command("deliveries")
def deliveries(
    ctx: typer.Context,
    ref: RefArg,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="Most shown.")] = 20,
    as_json: JsonFlag = False,
) -> None:
    """A notification's deliveries, newest first, with every attempt."""

    async def run(backend: NativeBackend) -> list[NotificationDelivery]:
        found = await _resolve(backend, ref)
        response = await backend.http.request(
            "GET", f"notifications/{found.id}/deliveries", params={"limit": limit}
        )
        return _DELIVERIES.validate_python(response.json())

    found = call(settings_of(ctx), run)
    if as_json:
        print_json([d.model_dump(mode="json") for d in found])
        return
    rows = table("id", "event", "status", "attempts", "created")
    for d in found:
        tries = "; ".join(
            f"#{a.attempt} {'ok' if a.ok else 'failed'}"
            + (f" {a.status_code}" if a.status_code else "")
            + (f" ({a.error})" if a.error and not a.ok else "")
            for a in d.history
        )
        rows.add_row(
            str(d.id),
            d.event,
            text(d.status.value, style=STATUS_STYLES.get(d.status, "")),
            tries or "-",
            age(d.created),
        )
    print_table(rows, "no deliveries yet")


@app.command("test")
def test(
    ctx: typer.Context,
    ref: RefArg,
    wait: Annotated[
        float, typer.Option("--wait", min=0, help="Seconds to wait for the outcome.")
    ] = 15.0,
) -> None:
    """Send a TEST event to the webhook and say how it went (exit 1 unless DELIVERED)."""

    async def run(backend: NativeBackend) -> NotificationDelivery:
        found = await _resolve(backend, ref)
        response = await backend.http.request("POST", f"notifications/{found.id}/test", retry=False)
        delivery = NotificationDelivery.model_validate(response.json())
        deadline = asyncio.get_running_loop().time() + wait
        while delivery.status is DeliveryStatus.PENDING:
            if asyncio.get_running_loop().time() > deadline:
                return delivery
            await asyncio.sleep(0.2)
            listed = await backend.http.request(
                "GET", f"notifications/{found.id}/deliveries", params={"limit": 20}
            )
            for candidate in _DELIVERIES.validate_python(listed.json()):
                if candidate.id == delivery.id:
                    delivery = candidate
        return delivery

    delivery = call(settings_of(ctx), run)
    say(last_result(delivery))
    if delivery.status is not DeliveryStatus.DELIVERED:
        raise typer.Exit(1)


@app.command("delete")
def delete(
    ctx: typer.Context,
    ref: RefArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete a notification (and its delivery history)."""
    settings = settings_of(ctx)

    async def find(backend: NativeBackend) -> Notification:
        return await _resolve(backend, ref)

    found = call(settings, find)
    confirm(f"Delete notification {found.name!r} ({found.id})?", yes)

    async def run(backend: NativeBackend) -> None:
        await backend.http.request("DELETE", f"notifications/{found.id}")

    call(settings, run)
    say(f"deleted notification {found.name!r} ({found.id})")
