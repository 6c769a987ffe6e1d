"""The Prefect work pool an agent serves: its type, its queues, its runs' job configuration.

``agent start QUEUE_UUID`` serves one queue; ``agent start --pool NAME [--work-queue NAME]…``
serves a pool the way ``prefect worker start --pool NAME [--work-queue NAME]…`` does: the named
queues, or every queue of the pool, highest priority first (the server lists due runs in that
order: ``get-runs-from-worker-queues.sql``, ``wq.priority ASC``). The daemon knows the pool by
:func:`pool_queue_id`, a UUID made from its name.

A pool's type says what launches its runs. ``process`` pools (Prefect's ``ProcessWorker``) and
Prefect 2 agents' ``prefect-agent`` pools (their ``Process`` infrastructure blocks) run on the
subprocess runner, ``docker`` pools on the Docker runner (:mod:`agent.backends.prefect_docker`);
any other type is refused at start, before anything is claimed, instead of running its runs as
local processes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote
from uuid import NAMESPACE_URL, UUID, uuid5

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from agent.backends.http import HttpClient
from agent.backends.prefect_jobvars import (
    JobConfiguration,
    block_configuration,
    merged_variables,
    template_configuration,
)
from agent.backends.prefect_wire import PDeployment, PQueue, PRun
from agent.errors import ConfigError, NotFound

#: Pool types whose runs the agent launches, and the runner each runs on.
SERVED_TYPES = {"process": "subprocess", "prefect-agent": "subprocess", "docker": "docker"}
#: Prefect's page size limit for listing a pool's queues.
_PAGE = 200
_POOL_NAMESPACE = uuid5(NAMESPACE_URL, "https://flowagent/prefect-pool")


def pool_queue_id(pool: str) -> UUID:
    """The id the daemon knows a served pool by (stable: the default agent name comes from it)."""
    return uuid5(_POOL_NAMESPACE, pool)


class PPool(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: UUID
    name: str
    type: str = "process"
    base_job_template: dict[str, Any] = Field(default_factory=dict)
    is_paused: bool = False


class PPoolQueue(PQueue):
    priority: int | None = None


@dataclass
class Served:
    """What one agent serves: a pool and some of its queues, highest priority first."""

    id: UUID  # the daemon's id for it: a queue's own, or pool_queue_id(pool) for --pool
    pool: PPool
    queues: list[PQueue]
    # `--pool` with no `--work-queue`: every queue of the pool, those made after start too (as
    # Prefect's worker: it asks for the pool's runs without naming queues).
    every_queue: bool = False
    blocks: dict[UUID, dict[str, Any]] = field(default_factory=dict)  # 2.x blocks' data

    @property
    def names(self) -> list[str]:
        return [q.name for q in self.queues]

    @property
    def ids(self) -> set[UUID]:
        return {q.id for q in self.queues}

    @property
    def runner(self) -> str:
        return SERVED_TYPES[self.pool.type]


def _pool_url(name: str) -> str:
    return f"work_pools/{quote(name, safe='')}"


async def read_pool(http: HttpClient, name: str) -> PPool:
    """The pool, refused with a clear message when its type is not one the agent can run."""
    try:
        response = await http.request("GET", _pool_url(name))
    except NotFound as exc:
        raise NotFound(
            f"no work pool named {name!r}",
            status_code=404,
            hint="list the pools with `prefect work-pool ls`",
        ) from exc
    pool = PPool.model_validate(response.json())
    if pool.type not in SERVED_TYPES:
        raise ConfigError(
            f"work pool {pool.name!r} is of type {pool.type!r}: flowagent runs the runs of "
            f"{', '.join(repr(t) for t in SERVED_TYPES)} pools only, and will not run its "
            "runs as local processes",
            hint=f"serve this pool with Prefect's own worker (`prefect worker start --pool "
            f"{pool.name}`), or point the agent at a process pool's queue",
        )
    return pool


async def pool_queues(http: HttpClient, pool: PPool, names: Sequence[str]) -> list[PQueue]:
    """The pool's queues named (all when none is), highest priority first, as Prefect's worker
    polls them; an unknown name is refused with the names there are."""
    found: list[PPoolQueue] = []
    offset = 0
    while True:
        response = await http.request(
            "POST",
            f"{_pool_url(pool.name)}/queues/filter",
            json={"limit": _PAGE, "offset": offset},
        )
        page = TypeAdapter(list[PPoolQueue]).validate_python(response.json())
        found.extend(page)
        if len(page) < _PAGE:
            break
        offset += _PAGE
    for queue in found:
        queue.work_pool_name = queue.work_pool_name or pool.name
    by_name = {q.name: q for q in found}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise ConfigError(
            f"work pool {pool.name!r} has no queue named {', '.join(map(repr, missing))} "
            f"(its queues: {', '.join(sorted(by_name)) or 'none'})",
            hint=f"create it with `prefect work-queue create NAME --pool {pool.name}`, or "
            "drop --work-queue to serve every queue of the pool",
        )
    chosen: list[PPoolQueue] = [by_name[n] for n in dict.fromkeys(names)] if names else found
    if not chosen:
        raise ConfigError(
            f"work pool {pool.name!r} has no work queues",
            hint=f"create one with `prefect work-queue create NAME --pool {pool.name}`",
        )
    # Prefect's priorities are 1 (highest) and up; ties (never made by the server) by name.
    ordered = sorted(chosen, key=lambda q: (1 << 30 if q.priority is None else q.priority, q.name))
    return list(ordered)


async def job_configuration(
    http: HttpClient, served: Served, deployment: PDeployment | None, run: PRun
) -> JobConfiguration:
    """What Prefect's consumer of this pool would launch the run with (see prefect_jobvars)."""
    variables = deployment.variables if deployment is not None else {}
    if served.pool.type == "prefect-agent":
        block_id = deployment.infrastructure_document_id if deployment is not None else None
        block: dict[str, Any] = {}
        if block_id is not None:
            if block_id not in served.blocks:
                try:
                    response = await http.request("GET", f"block_documents/{block_id}")
                    data = response.json().get("data")
                    served.blocks[block_id] = data if isinstance(data, dict) else {}
                except NotFound:
                    served.blocks[block_id] = {}  # deleted: Prefect's agent would fail the run
            block = served.blocks[block_id]
        return block_configuration(block, variables, (run.job_variables or {}).get("env"))
    values = merged_variables(variables, run.job_variables)
    return template_configuration(served.pool.base_job_template, values)
