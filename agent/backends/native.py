"""Client of the embedded server's API (docs/API.md): the daemon's Backend and the CLI's calls."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, TypeVar
from uuid import UUID

import httpx
import structlog
from pydantic import BaseModel, TypeAdapter, ValidationError

from agent.backends.batching import Coalescer
from agent.backends.http import HttpClient
from agent.errors import ApiError, Conflict, NotFound
from agent.models import (
    AgentRecord,
    Bundle,
    ClaimedRun,
    ClaimRequest,
    ConcurrencyLimit,
    ConcurrencyLimitCreate,
    ConcurrencyLimitUpdate,
    Deployment,
    DeploymentCreate,
    FlowRun,
    FlowRunCreate,
    FlowRunRerun,
    Health,
    Heartbeat,
    LogLine,
    LogLineCreate,
    RunnerInfoUpdate,
    RunReport,
    RunReportResult,
    State,
    StateProposal,
    StateType,
    WorkQueue,
    WorkQueueCreate,
    WorkQueueUpdate,
)

M = TypeVar("M")

log = structlog.get_logger("agent.backends.native")


def _parse(model: type[M] | Any, response: httpx.Response) -> M:
    """The answer as ``model``; anything else means this is not the server we think it is."""
    try:
        result: M = TypeAdapter(model).validate_python(response.json())
    except (ValueError, ValidationError) as exc:  # ValidationError is a ValueError too
        raise ApiError(
            f"unexpected answer from {response.request.method} {response.request.url}: "
            f"{str(exc).splitlines()[0]}",
            status_code=response.status_code,
            hint="is a flowagent server (agent server start) listening at the API URL? "
            "check --api-url / AGENT_API_URL",
        ) from exc
    return result


def _body(model: BaseModel) -> Any:
    return model.model_dump(mode="json", exclude_unset=False)


def _without_empty(body: dict[str, Any], key: str) -> dict[str, Any]:
    """``body`` without ``key`` when it holds nothing: a one-queue agent's requests stay what
    servers from before several queues per agent accept (their models forbid unknown fields)."""
    if not body.get(key):
        body.pop(key, None)
    return body


def _outcome(result: RunReportResult) -> FlowRun | BaseException:
    """One batched report's result as the single-run route's answer (or its error) would be."""
    if result.status == 200 and result.flow_run is not None:
        return result.flow_run
    detail = result.detail or f"report refused ({result.status})"
    if result.status == 404:
        return NotFound(detail, status_code=404)
    if result.status == 409:
        return Conflict(detail, status_code=409)
    return ApiError(f"report failed ({result.status}): {detail}", status_code=result.status)


# The daemon's own calls (reports, heartbeats, cancellation checks) give up after this and let
# their loop, or the spool, take over: one stuck call must not hold a run's slot for long.
LOOP_RETRY_SECONDS = 5.0


class NativeBackend:
    """Talks to `agent server start`. Implements :class:`agent.backends.base.Backend`."""

    several_queues: ClassVar[bool] = True

    def __init__(self, http: HttpClient) -> None:
        self.http = http
        # State reports and runner-info merges made while others are in flight go out together
        # (POST flow_runs/reports): one request and one transaction for many runs.
        self.reports: Coalescer[RunReport, FlowRun] = Coalescer(self._report_one, self._report_many)
        self._batches_supported = True

    async def aclose(self) -> None:
        await self.reports.aclose()
        await self.http.aclose()

    # ------------------------------------------------------------------ health

    async def health(self) -> Health:
        response = await self.http.request("GET", "health")
        return _parse(Health, response)

    # ------------------------------------------------------------------ work queues

    async def get_queue(self, queue_id: UUID) -> WorkQueue:
        try:
            response = await self.http.request("GET", f"work_queues/{queue_id}")
        except NotFound as exc:
            raise NotFound(
                f"no work queue with id {queue_id}",
                status_code=404,
                hint="list the queues with `agent work-queue ls`",
            ) from exc
        return _parse(WorkQueue, response)

    async def get_queue_by_name(self, name: str) -> WorkQueue:
        response = await self.http.request("GET", f"work_queues/name/{name}")
        return _parse(WorkQueue, response)

    async def create_queue(self, body: WorkQueueCreate) -> WorkQueue:
        response = await self.http.request("POST", "work_queues", json=_body(body), retry=False)
        return _parse(WorkQueue, response)

    async def list_queues(self) -> list[WorkQueue]:
        response = await self.http.request("GET", "work_queues")
        return _parse(list[WorkQueue], response)

    async def update_queue(self, queue_id: UUID, body: WorkQueueUpdate) -> WorkQueue:
        response = await self.http.request(
            "PATCH",
            f"work_queues/{queue_id}",
            json=body.model_dump(mode="json", exclude_unset=True),
        )
        return _parse(WorkQueue, response)

    async def delete_queue(self, queue_id: UUID) -> None:
        await self.http.request("DELETE", f"work_queues/{queue_id}")

    async def preview_queue(self, queue_id: UUID, hours: float) -> list[FlowRun]:
        response = await self.http.request(
            "GET", f"work_queues/{queue_id}/preview", params={"hours": hours}
        )
        return _parse(list[FlowRun], response)

    # ------------------------------------------------------------------ deployments

    async def create_deployment(self, body: DeploymentCreate) -> Deployment:
        # An upsert by name: safe to retry.
        response = await self.http.request("POST", "deployments", json=_body(body))
        return _parse(Deployment, response)

    async def list_deployments(self) -> list[Deployment]:
        response = await self.http.request("GET", "deployments")
        return _parse(list[Deployment], response)

    async def get_deployment(self, deployment_id: UUID) -> Deployment:
        response = await self.http.request("GET", f"deployments/{deployment_id}")
        return _parse(Deployment, response)

    async def get_deployment_by_name(self, name: str) -> Deployment:
        response = await self.http.request("GET", f"deployments/name/{name}")
        return _parse(Deployment, response)

    async def delete_deployment(self, deployment_id: UUID) -> None:
        await self.http.request("DELETE", f"deployments/{deployment_id}")

    async def create_run(self, deployment_id: UUID, body: FlowRunCreate) -> FlowRun:
        response = await self.http.request(
            "POST", f"deployments/{deployment_id}/runs", json=_body(body), retry=False
        )
        return _parse(FlowRun, response)

    # ------------------------------------------------------------------ flow runs

    async def list_runs(
        self,
        *,
        work_queue_id: UUID | None = None,
        deployment_id: UUID | None = None,
        agent_id: UUID | None = None,
        states: Sequence[StateType] = (),
        limit: int = 200,
    ) -> list[FlowRun]:
        params: dict[str, Any] = {"limit": limit}
        if work_queue_id:
            params["work_queue_id"] = str(work_queue_id)
        if deployment_id:
            params["deployment_id"] = str(deployment_id)
        if agent_id:
            params["agent_id"] = str(agent_id)
        if states:
            params["state"] = [s.value for s in states]
        response = await self.http.request("GET", "flow_runs", params=params)
        return _parse(list[FlowRun], response)

    async def upload_bundle(self, data: bytes) -> Bundle:
        # Content-addressed: sending the same bytes again stores nothing new, so retrying is safe.
        response = await self.http.request(
            "POST",
            "bundles",
            content=data,
            timeout=max(60.0, len(data) / 1_000_000),
        )
        return _parse(Bundle, response)

    async def download_bundle(self, digest: str) -> bytes:
        response = await self.http.request(
            "GET", f"bundles/{digest}", timeout=600.0, retry_for=LOOP_RETRY_SECONDS
        )
        return response.content

    async def get_run(self, run_id: UUID) -> FlowRun:
        response = await self.http.request("GET", f"flow_runs/{run_id}")
        return _parse(FlowRun, response)

    async def run_states(self, run_id: UUID) -> list[State]:
        response = await self.http.request("GET", f"flow_runs/{run_id}/states")
        return _parse(list[State], response)

    async def cancel_run(self, run_id: UUID) -> FlowRun:
        response = await self.http.request("POST", f"flow_runs/{run_id}/cancel")
        return _parse(FlowRun, response)

    async def retry_run(self, run_id: UUID) -> FlowRun:
        # Not retried: a lost answer resent would be refused (the run is SCHEDULED by then).
        response = await self.http.request("POST", f"flow_runs/{run_id}/retry", retry=False)
        return _parse(FlowRun, response)

    async def rerun_run(self, run_id: UUID, body: FlowRunRerun) -> FlowRun:
        # Not retried: each request makes a new run.
        response = await self.http.request(
            "POST", f"flow_runs/{run_id}/rerun", json=_body(body), retry=False
        )
        return _parse(FlowRun, response)

    async def get_logs(
        self, run_id: UUID, after: int | None = None, limit: int = 1000
    ) -> list[LogLine]:
        params: dict[str, Any] = {"limit": limit}
        if after is not None:
            params["after"] = after
        response = await self.http.request("GET", f"flow_runs/{run_id}/logs", params=params)
        return _parse(list[LogLine], response)

    # ------------------------------------------------------------------ tag concurrency limits

    async def create_limit(self, body: ConcurrencyLimitCreate) -> ConcurrencyLimit:
        response = await self.http.request(
            "POST", "concurrency_limits", json=_body(body), retry=False
        )
        return _parse(ConcurrencyLimit, response)

    async def list_limits(self) -> list[ConcurrencyLimit]:
        response = await self.http.request("GET", "concurrency_limits")
        return _parse(list[ConcurrencyLimit], response)

    async def get_limit(self, limit_id: UUID) -> ConcurrencyLimit:
        response = await self.http.request("GET", f"concurrency_limits/{limit_id}")
        return _parse(ConcurrencyLimit, response)

    async def get_limit_by_name(self, name: str) -> ConcurrencyLimit:
        response = await self.http.request("GET", f"concurrency_limits/name/{name}")
        return _parse(ConcurrencyLimit, response)

    async def update_limit(self, limit_id: UUID, body: ConcurrencyLimitUpdate) -> ConcurrencyLimit:
        response = await self.http.request(
            "PATCH", f"concurrency_limits/{limit_id}", json=_body(body)
        )
        return _parse(ConcurrencyLimit, response)

    async def delete_limit(self, limit_id: UUID) -> None:
        await self.http.request("DELETE", f"concurrency_limits/{limit_id}")

    # ------------------------------------------------------------------ the agent's conversation

    async def heartbeat(self, beat: Heartbeat) -> AgentRecord:
        # A beat that lists the agent's runs is sent once: the server takes a run it does not
        # list for one the agent dropped, so a list must not arrive late, as a retry of a beat
        # composed before a claim would. The next beat, composed afresh, is the retry.
        listing = beat.run_ids is not None
        response = await self.http.request(
            "POST",
            "agents/heartbeat",
            json=_without_empty(_body(beat), "work_queue_ids"),
            retry_for=0.0 if listing else LOOP_RETRY_SECONDS,
            priority=True,
        )
        return _parse(AgentRecord, response)

    async def list_agents(self) -> list[AgentRecord]:
        response = await self.http.request("GET", "agents")
        return _parse(list[AgentRecord], response)

    async def claim(
        self,
        queue_ids: Sequence[UUID],
        agent_id: UUID,
        tags: Sequence[str],
        limit: int,
        wait_seconds: float,
        claim_id: UUID | None = None,
        lead_seconds: float = 0.0,
    ) -> list[ClaimedRun]:
        # One queue keeps the per-queue route, which servers from before several queues per
        # agent also answer.
        several = len(queue_ids) > 1
        path = "work_queues/claim" if several else f"work_queues/{queue_ids[0]}/claim"
        body = ClaimRequest(
            agent_id=agent_id,
            work_queue_ids=list(queue_ids) if several else [],
            tags=list(tags),
            limit=limit,
            wait_seconds=wait_seconds,
            claim_id=claim_id,
            lead_seconds=lead_seconds,
        )
        # With a claim_id a retry answers what the first request took, so it is safe to retry;
        # without one, only a request that never reached the server may be sent again.
        response = await self.http.request(
            "POST",
            path,
            json=_without_empty(_body(body), "work_queue_ids"),
            timeout=wait_seconds + self.http_timeout_margin,
            retry=claim_id is not None,
            retry_for=LOOP_RETRY_SECONDS,
        )
        return _parse(list[ClaimedRun], response)

    http_timeout_margin = 10.0

    async def set_state(self, run_id: UUID, proposal: StateProposal) -> FlowRun:
        return await self.reports.submit(RunReport(run_id=run_id, state=proposal))

    async def update_runner_info(self, run_id: UUID, info: dict[str, Any]) -> None:
        await self.reports.submit(RunReport(run_id=run_id, runner_info=info))

    async def _report_one(self, report: RunReport) -> FlowRun:
        body: BaseModel
        if report.state is not None:
            path, method, body = f"flow_runs/{report.run_id}/set_state", "POST", report.state
        else:
            assert report.runner_info is not None
            path, method = f"flow_runs/{report.run_id}", "PATCH"
            body = RunnerInfoUpdate(runner_info=report.runner_info)
        response = await self.http.request(
            method, path, json=_body(body), retry_for=LOOP_RETRY_SECONDS
        )
        return _parse(FlowRun, response)

    async def _report_many(self, reports: Sequence[RunReport]) -> list[FlowRun | BaseException]:
        if self._batches_supported:
            try:
                response = await self.http.request(
                    "POST",
                    "flow_runs/reports",
                    json=[_body(report) for report in reports],
                    retry_for=LOOP_RETRY_SECONDS,
                )
            except ApiError as exc:
                # A server from before the batch route answers 404 or 405 (the path reads as
                # a run id there): fall back to one request per report, for good.
                if exc.status_code not in (404, 405):
                    raise
                self._batches_supported = False
                log.info("report_batches_unsupported", status=exc.status_code)
            else:
                results: list[RunReportResult] = _parse(list[RunReportResult], response)
                return [_outcome(result) for result in results]
        outcomes: list[FlowRun | BaseException] = []
        for report in reports:
            try:
                outcomes.append(await self._report_one(report))
            except Exception as exc:
                outcomes.append(exc)
        return outcomes

    async def send_logs(
        self, run_id: UUID, lines: Sequence[LogLineCreate], *, batch_id: UUID | None = None
    ) -> None:
        if lines:
            await self.http.request(
                "POST",
                f"flow_runs/{run_id}/logs",
                json=[_body(line) for line in lines],
                params={"batch_id": str(batch_id)} if batch_id else None,
                retry_for=LOOP_RETRY_SECONDS,
            )

    async def claimed_runs(self, agent_id: UUID) -> list[FlowRun]:
        params = {
            "agent_id": str(agent_id),
            "state": [StateType.PENDING.value, StateType.RUNNING.value, StateType.CANCELLING.value],
            "limit": 1000,
        }
        response = await self.http.request(
            "GET", "flow_runs", params=params, retry_for=LOOP_RETRY_SECONDS
        )
        return _parse(list[FlowRun], response)

    async def cancelling_runs(self, agent_id: UUID) -> list[UUID]:
        response = await self.http.request(
            "GET", f"agents/{agent_id}/cancelling", retry_for=LOOP_RETRY_SECONDS
        )
        return _parse(list[UUID], response)
