"""`agent agents ls`: every agent the server has heard from."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

import typer

from agent.backends.native import NativeBackend
from agent.cli.context import settings_of
from agent.cli.lookup import queue_names
from agent.cli.output import age, call, print_json, print_table, table, text
from agent.models import AgentRecord, AgentStatus

app = typer.Typer(help="Agents: the daemons polling work queues.", no_args_is_help=True)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


@app.command("ls")
def ls(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List agents: ONLINE while their heartbeats arrive."""

    async def run(backend: NativeBackend) -> tuple[list[AgentRecord], dict[UUID, str]]:
        return await backend.list_agents(), await queue_names(backend)

    agents, queues = call(settings_of(ctx), run)
    if as_json:
        print_json([a.model_dump(mode="json") for a in agents])
        return
    rows = table(
        "name", "id", "status", "queues", "runs in flight", "last heartbeat", "cpu", "mem", "load"
    )
    for a in agents:
        online = a.status is AgentStatus.ONLINE
        rows.add_row(
            a.name,
            str(a.id),
            text(a.status.value, style="green" if online else "red"),
            # In priority order.
            ", ".join(queues.get(q, str(q)) for q in a.work_queue_ids or [a.work_queue_id]),
            str(a.runs_in_flight),
            age(a.last_heartbeat),
            _percent(a.metrics.cpu_percent if a.metrics else None),
            _percent(a.metrics.memory_percent if a.metrics else None),
            _load(a.metrics.load_1m if a.metrics else None),
        )
    print_table(rows, "no agents yet; start one with agent start QUEUE_ID")


def _load(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
