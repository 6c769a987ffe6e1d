"""Prefect 2's tag-filter work queues ("tag-based", ``prefect work-queue create Q --tag T``).

Such a queue has a ``filter`` instead of runs of its own: it lives in the pool
``default-agent-pool`` and matches every SCHEDULED run, of any queue, that has a deployment
and all the filter's tags (and, if it names some, one of its deployments). Its concurrency
limit counts the PENDING/RUNNING runs that match the same filter. ``prefect agent`` reads it
through ``POST work_queues/{id}/get_runs``, where the server applies those rules
(``prefect/server/models/work_queues.py``, ``_legacy_get_runs_in_work_queue``); the pool's
``get_scheduled_flow_runs`` knows nothing of them and answers the queue's own runs, which the
filter skips. So the agent reads a tag-filter queue's runs through the same route.

Prefect 3.9.1's server still accepts and serves such queues, but nothing of Prefect 3 runs
them: its workers refuse the ``prefect-agent`` pool they live in ("'prefect-agent' typed work
pools work with Prefect Agents instead of Workers"), and Prefect 3 has no agent. The agent
refuses them on a Prefect 3 server too, saying what to do instead.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import TypeAdapter

from agent.backends.http import HttpClient
from agent.backends.prefect_wire import PQueue, PRun
from agent.errors import ConfigError
from agent.models import utcnow

#: The most runs ``work_queues/{id}/get_runs`` answers at once (more is a 422).
MAX_LIMIT = 200


def is_tag_queue(queue: PQueue) -> bool:
    return queue.filter is not None


def check_served(queue: PQueue, server_major: int) -> None:
    """Refuse a tag-filter queue where Prefect itself would not serve it (Prefect 3)."""
    if is_tag_queue(queue) and server_major >= 3:
        tags = ", ".join((queue.filter or {}).get("tags") or []) or "none"
        raise ConfigError(
            f"work queue {queue.name} ({queue.id}) is a Prefect 2 tag-filter queue "
            f"(tags: {tags}) in pool {queue.work_pool_name}: Prefect 3 serves such queues "
            "with no worker (its workers refuse 'prefect-agent' pools) and has no agent, so "
            "neither does this agent",
            hint=(
                "create a queue in a work pool (`prefect work-pool create P --type process`, "
                "`prefect work-queue create Q --pool P`), deploy to it and start the agent on "
                "that queue; run tags can still be required with `agent start --tag`"
            ),
        )


async def tag_queue_runs(
    http: HttpClient, queue: PQueue, limit: int, prefetch_seconds: float = 0.0
) -> list[PRun]:
    """The runs the server says the tag-filter queue may start now (filter and concurrency
    limit applied), due within ``prefetch_seconds``."""
    body = {
        "limit": max(1, min(MAX_LIMIT, limit)),
        "scheduled_before": (utcnow() + timedelta(seconds=prefetch_seconds)).isoformat(),
    }
    response = await http.request("POST", f"work_queues/{queue.id}/get_runs", json=body)
    return TypeAdapter(list[PRun]).validate_python(response.json())


def tag_queue_runs_filter(queue: PQueue) -> dict[str, Any]:
    """A ``flow_runs/filter`` body's ``flow_runs`` part for the runs the queue's filter
    matches (a restarted agent looks for the runs it claimed among them)."""
    queue_filter = queue.filter or {}
    match: dict[str, Any] = {"deployment_id": {"is_null_": False}}
    if queue_filter.get("tags"):
        match["tags"] = {"all_": list(queue_filter["tags"])}
    if queue_filter.get("deployment_ids"):
        match["deployment_id"] = {"any_": [str(d) for d in queue_filter["deployment_ids"]]}
    return match
