"""Find the queue, deployment or run a user named, by UUID or by name."""

from __future__ import annotations

from uuid import UUID

from agent.backends.native import NativeBackend
from agent.cli.parsing import looks_like_uuid, parse_uuid
from agent.errors import NotFound
from agent.models import Deployment, WorkQueue

LIST_QUEUES = "agent work-queue ls"
LIST_DEPLOYMENTS = "agent deployment ls"
LIST_RUNS = "agent flow-run ls"


async def resolve_queue(backend: NativeBackend, ref: str) -> WorkQueue:
    """A queue by UUID (``get_queue``) or else by name (``get_queue_by_name``)."""
    try:
        if looks_like_uuid(ref):
            return await backend.get_queue(UUID(ref))
        return await backend.get_queue_by_name(ref)
    except NotFound as exc:
        kind = "id" if looks_like_uuid(ref) else "name"
        raise NotFound(
            f"no work queue with {kind} {ref!r}",
            status_code=404,
            hint=f"list the queues with {LIST_QUEUES}",
        ) from exc


async def resolve_deployment(backend: NativeBackend, ref: str) -> Deployment:
    try:
        if looks_like_uuid(ref):
            return await backend.get_deployment(UUID(ref))
        return await backend.get_deployment_by_name(ref)
    except NotFound as exc:
        kind = "id" if looks_like_uuid(ref) else "name"
        raise NotFound(
            f"no deployment with {kind} {ref!r}",
            status_code=404,
            hint=f"list the deployments with {LIST_DEPLOYMENTS}",
        ) from exc


def run_id(ref: str) -> UUID:
    return parse_uuid(ref, "flow-run", "runs", LIST_RUNS)


async def queue_names(backend: NativeBackend) -> dict[UUID, str]:
    return {queue.id: queue.name for queue in await backend.list_queues()}
