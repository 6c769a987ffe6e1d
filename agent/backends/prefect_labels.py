"""What Prefect's worker tells a run and its server about who runs it, done the same way.

From Prefect 3.9.1's ``prefect/workers/base.py``:

* run labels (``_give_worker_labels_to_flow_run``, before the run starts):
  ``prefect.worker.name``, ``prefect.worker.type``, ``prefect.work-pool.name``,
  ``prefect.work-pool.id``. Prefect 2 has no run labels.
* the engine's environment (``_base_attribution_environment``): ``PREFECT__WORKER_NAME``,
  ``PREFECT__FLOW_ID``, ``PREFECT__FLOW_NAME``, ``PREFECT__DEPLOYMENT_ID``,
  ``PREFECT__DEPLOYMENT_NAME``. (``PREFECT__WORKER_ID`` is the worker's id on Prefect Cloud
  only; ``PREFECT__FLOW_ENTRYPOINT`` is set by 3.9's workspace supervisor once it has run the
  deployment's pull steps itself: the engine then imports the entrypoint without running
  them. The agent leaves the pull steps to the engine, so it must not set it.)
* the run's logs, from the logger ``prefect.flow_runs.worker``: "Worker 'NAME' submitting flow
  run 'ID'" when it takes the run, "Flow run 'NAME' submitted to infrastructure" once the
  process is up, and for a process that exits non-zero, "Process exited with status code: N.
  <explanation>" and what to do (``prefect/_internal/infrastructure_exit_codes.py``).
* ``infrastructure_pid``: the 3.x process worker writes the bare pid; Prefect 2's agent
  (``prefect/infrastructure/process.py``) writes ``"host:pid"``.
"""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

import structlog

from agent.backends.http import HttpClient
from agent.backends.prefect_claims import pool_path
from agent.backends.prefect_wire import PDeployment, PQueue, PRun
from agent.errors import FlowAgentError
from agent.models import utcnow

log = structlog.get_logger("agent.prefect")

WORKER_LOGGER = "prefect.flow_runs.worker"

#: Prefect's explanation and advice per exit code (infrastructure_exit_codes.py, 3.9.1).
EXIT_HINTS: dict[int, tuple[str, str]] = {
    -9: (
        "Process exited due to a SIGKILL signal. Typically caused by the operating system "
        "terminating the process for exceeding memory limits, or by manual cancellation.",
        "Check whether the flow run exceeded its memory allocation. If running in a container, "
        "increase the memory limit. If this was intentional cancellation, no action is needed.",
    ),
    -15: (
        "Process exited due to a SIGTERM signal. Typically caused by graceful shutdown or "
        "manual cancellation.",
        "If this was caused by cancellation, no action is needed. Otherwise, check for "
        "infrastructure scaling events or deployment rollovers.",
    ),
    1: (
        "Process exited with a general error.",
        "Check the flow run logs for an unhandled exception or assertion error.",
    ),
    137: (
        "Process was killed, likely due to an out-of-memory (OOM) condition.",
        "Increase the memory allocation for the flow run infrastructure.",
    ),
    143: (
        "Process received SIGTERM via the container runtime. This is the containerized "
        "equivalent of exit code -15.",
        "If this was caused by cancellation or a scaling event, no action is needed.",
    ),
}
_UNKNOWN_EXIT = (
    "Process exited with an unexpected status code.",
    "Check the flow run logs and infrastructure logs for more details.",
)


def exit_lines(code: int) -> list[tuple[int, str]]:
    """The worker's (level, message) lines for a process that exited with ``code`` (not 0)."""
    explanation, resolution = EXIT_HINTS.get(code, _UNKNOWN_EXIT)
    level = logging.INFO if code in (-9, -15, 143) else logging.ERROR
    return [
        (level, f"Process exited with status code: {code}. {explanation}"),
        (logging.INFO, resolution),
    ]


class WorkerIdentity:
    """The server's version and the pool's id and type, read once; what follows from them."""

    def __init__(self, http: HttpClient) -> None:
        self.http = http
        self.major = 3
        self.pool_id: str | None = None
        self.pool_name: str | None = None
        self.worker_type = "process"
        self._flow_names: dict[UUID, str] = {}
        self.run_names: dict[UUID, str] = {}  # of the runs being launched, for their log lines

    async def resolve(self, queue: PQueue) -> None:
        """Read the server's version and the queue's pool (once per queue)."""
        if self.pool_name == queue.work_pool_name:
            return
        try:
            response = await self.http.request("GET", "admin/version")
            version = str(response.json())
            self.major = int(version.split(".", 1)[0]) if version[:1].isdigit() else 3
            pool = (await self.http.request("GET", pool_path(queue))).json()
        except FlowAgentError as exc:
            log.warning("worker_identity_unknown", error=str(exc))
            return
        self.pool_name = queue.work_pool_name
        self.pool_id = str(pool.get("id") or "") or None
        # Prefect's worker type is the pool's (a process worker serves process pools).
        self.worker_type = str(pool.get("type") or "process")

    def infrastructure_pid(self, hostname: str, pid: int) -> str:
        return str(pid) if self.major >= 3 else f"{hostname}:{pid}"

    async def env(self, run: PRun, deployment: PDeployment, worker_name: str) -> dict[str, str]:
        env = {"PREFECT__WORKER_NAME": worker_name}
        if run.flow_id is not None:
            env["PREFECT__FLOW_ID"] = str(run.flow_id)
            name = await self._flow_name(run.flow_id)
            if name:
                env["PREFECT__FLOW_NAME"] = name
        if run.deployment_id is not None:
            env["PREFECT__DEPLOYMENT_ID"] = str(run.deployment_id)
            env["PREFECT__DEPLOYMENT_NAME"] = deployment.name
        return env

    async def _flow_name(self, flow_id: UUID) -> str | None:
        if flow_id not in self._flow_names:
            try:
                response = await self.http.request("GET", f"flows/{flow_id}")
            except FlowAgentError as exc:
                log.warning("flow_name_unknown", flow_id=str(flow_id), error=str(exc))
                return None
            self._flow_names[flow_id] = str(response.json().get("name") or "")
        return self._flow_names[flow_id] or None

    def labels(self, worker_name: str) -> dict[str, str]:
        labels = {"prefect.worker.name": worker_name, "prefect.worker.type": self.worker_type}
        if self.pool_name and self.pool_id:
            labels["prefect.work-pool.name"] = self.pool_name
            labels["prefect.work-pool.id"] = self.pool_id
        return labels

    async def label(self, run_id: UUID, worker_name: str) -> None:
        """Give the run the worker's labels (Prefect 3; Prefect 2 has none)."""
        if self.major < 3:
            return
        try:
            await self.http.request(
                "PATCH", f"flow_runs/{run_id}/labels", json=self.labels(worker_name)
            )
        except FlowAgentError as exc:
            log.warning("run_labels_not_set", run_id=str(run_id), error=str(exc))

    async def say(self, run_id: UUID, lines: list[tuple[int, str]]) -> None:
        """The worker's own lines in the run's logs; a failure loses them, never the run."""
        logs: list[dict[str, Any]] = [
            {
                "flow_run_id": str(run_id),
                "level": level,
                "message": message,
                "name": WORKER_LOGGER,
                "timestamp": utcnow().isoformat(),
            }
            for level, message in lines
        ]
        try:
            await self.http.request("POST", "logs/", json=logs)
        except FlowAgentError as exc:
            log.warning("worker_lines_not_sent", run_id=str(run_id), error=str(exc))
