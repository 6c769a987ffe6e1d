"""The server's Prometheus metrics at ``GET /metrics``: requests answered, runs by state, agents.

One registry per app (two apps in one process, as in tests, do not collide). Requests are
counted by a small ASGI middleware under their route template (``/api/flow_runs/{flow_run_id}``,
not one series per run); run and agent counts are read from the database at scrape time.
``/metrics`` needs the API key when the server has one, like every route but health.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from sqlalchemy import func, select

from agent.models import AgentStatus, StateType, utcnow
from agent.server.db import Database
from agent.server.deps import require_api_key
from agent.server.orm import AgentRow, FlowRunRow, WorkQueueRow
from agent.server.views import agent_model

PREFIX = "flowagent_server"
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            f"{PREFIX}_requests",
            "HTTP requests answered, by method, route template and status code.",
            ["method", "route", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            f"{PREFIX}_request_duration_seconds",
            "Time to answer a request (claims include their long poll).",
            ["method", "route"],
            registry=r,
        )
        self.flow_runs = Gauge(
            f"{PREFIX}_flow_runs", "Flow runs in the database, by state.", ["state"], registry=r
        )
        self.queue_backlog = Gauge(
            f"{PREFIX}_queue_backlog",
            "Due SCHEDULED runs per work queue (waiting for an agent, or for a concurrency "
            "slot): what to scale agents on.",
            ["queue", "queue_id"],
            registry=r,
        )
        self.agents = Gauge(
            f"{PREFIX}_agents", "Agents known to the server, by status.", ["status"], registry=r
        )

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method=method, route=route, status=str(status)).inc()
        self.request_seconds.labels(method=method, route=route).observe(seconds)

    def read_database(self, db: Database, lease_seconds: float) -> None:
        """Set the run and agent gauges from the database (blocking: run it in a thread)."""
        with db.read() as session:
            counts = dict(
                session.execute(
                    select(FlowRunRow.state_type, func.count()).group_by(FlowRunRow.state_type)
                ).all()
            )
            now = utcnow()
            backlog = dict(
                session.execute(
                    select(FlowRunRow.work_queue_id, func.count())
                    .where(
                        FlowRunRow.state_type == StateType.SCHEDULED.value,
                        FlowRunRow.expected_start_time <= now,
                    )
                    .group_by(FlowRunRow.work_queue_id)
                ).all()
            )
            queues = session.execute(select(WorkQueueRow.id, WorkQueueRow.name)).all()
            statuses = [
                agent_model(row, now, lease_seconds).status
                for row in session.scalars(select(AgentRow))
            ]
        for state in StateType:
            self.flow_runs.labels(state=state.value).set(counts.get(state.value, 0))
        # A deleted queue's series goes with it.
        self.queue_backlog.clear()
        for queue_id, name in queues:
            self.queue_backlog.labels(queue=name, queue_id=str(queue_id)).set(
                backlog.get(queue_id, 0)
            )
        for status in AgentStatus:
            self.agents.labels(status=status.value).set(statuses.count(status))


def route_template(scope: Scope) -> str:
    """``/api/flow_runs/{run_id}`` for ``/api/flow_runs/0c1f…``: one series per route.

    Built from the path and its parameters, because an included router's route object does
    not carry the prefixes it was mounted under.
    """
    if scope.get("route") is None:
        return "unmatched"
    by_value = {str(value): name for name, value in scope.get("path_params", {}).items()}
    segments = str(scope["path"]).split("/")
    return "/".join(f"{{{by_value[s]}}}" if s in by_value else s for s in segments)


class RequestMetrics:
    """ASGI middleware: count and time every HTTP request by its route template."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            template = route_template(scope)
            self.metrics.observe(scope["method"], template, status, time.perf_counter() - started)


def install_metrics(app: FastAPI, db: Database, lease_seconds: float) -> ServerMetrics:
    """Add ``GET /metrics`` and the request-counting middleware to ``app``."""
    metrics = ServerMetrics()
    app.state.metrics = metrics
    app.add_middleware(RequestMetrics, metrics=metrics)

    @app.get(
        "/metrics",
        dependencies=[Depends(require_api_key)],
        tags=["health"],
        summary="Prometheus metrics: requests, runs by state, agents by status",
        response_class=Response,
    )
    async def scrape() -> Response:
        await db.run(metrics.read_database, db, lease_seconds)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return metrics
