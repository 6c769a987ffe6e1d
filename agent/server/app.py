"""The FastAPI application: routes under /api, auth, and error answers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import anyio
import anyio.to_thread
import structlog
from fastapi import Depends, FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, OperationalError

from agent import __version__
from agent.models import utcnow
from agent.server import web
from agent.server.body_limit import BodyLimit
from agent.server.bundle_upkeep import bundle_collector, import_from_disk
from agent.server.bundles import BundleStore
from agent.server.claim_sweep import claim_sweep
from agent.server.claims import ClaimWakeups
from agent.server.cross_site import RefuseCrossSite
from agent.server.db import Database, migrate
from agent.server.deps import require_api_key
from agent.server.engines import is_busy
from agent.server.leadership import Leadership
from agent.server.leases import lease_keeper
from agent.server.log_stream import LogFeed
from agent.server.metrics import install_metrics
from agent.server.notifications import NotificationConfig
from agent.server.routes import (
    agents,
    bundles,
    concurrency_limits,
    deployments,
    flow_runs,
    health,
    notifications,
    overview,
    schedules,
    work_queues,
)
from agent.server.scheduler import Clock, Scheduler, SchedulerConfig
from agent.server.settings import ServerSettings
from agent.server.wakeup_relay import WakeupRelay
from agent.server.webhooks import DeliveryWorker

log = structlog.get_logger("agent.server")

_DESCRIPTION = (
    "The flowagent work-queue API: work queues, deployments, flow runs, agents and logs. "
    "When the server has an API key, send it as `Authorization: Bearer <key>`."
)


# The API's route modules, each included straight into the app: a router included in a router
# is one more layer of coroutines that every request passes through and every held long poll
# keeps alive. A request is matched against the routes in this order, one after another, so a
# fleet's heartbeats, claims and reports come first; no path of one module matches another's
# (tests/unit/test_routes.py), so the order decides nothing else.
API_MODULES = (
    agents,
    work_queues,
    flow_runs,
    health,
    deployments,
    schedules,
    notifications,
    bundles,
    concurrency_limits,
    overview,
)


def create_app(
    settings: ServerSettings,
    *,
    migrate_on_startup: bool = True,
    scheduling: SchedulerConfig | None = None,
    notifying: NotificationConfig | None = None,
    clock: Clock = utcnow,
) -> FastAPI:
    """The server application for ``settings``.

    Args:
        settings: where the database lives and the API key, if any.
        migrate_on_startup: bring the schema up to date when the app starts; ``serve`` turns
            this off because it has migrated already, before it opened its port.
        scheduling: the scheduler's horizon, late and missed-run bounds (default: defaults).
        notifying: how notification events are delivered (default: defaults).
        clock: "now" for the scheduler and the notification worker (tests move it).
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if migrate_on_startup:
            await anyio.to_thread.run_sync(migrate, settings.home, settings.database())
        # Before serving: a deployment naming a bundle an older version kept on this disk must
        # find it in the database from the first request on.
        await anyio.to_thread.run_sync(import_from_disk, db, settings.home)
        leadership = Leadership(settings.database() if db.is_postgres else None)
        app.state.leadership = leadership

        async def duties() -> None:
            async with anyio.create_task_group() as leading:
                leading.start_soon(
                    lease_keeper,
                    db,
                    notifier,
                    settings.lease_seconds,
                    settings.lease_check_seconds,
                    name="lease-keeper",
                )
                leading.start_soon(scheduler.run, name="scheduler")
                leading.start_soon(webhooks.run, name="notification-delivery")
                leading.start_soon(
                    bundle_collector,
                    db,
                    settings.bundle_retention_seconds,
                    name="bundle-collector",
                )

        async with anyio.create_task_group() as background:
            # One pass before serving, so that runs missed while the server was down are
            # sorted out (catch-up policy) before any agent can claim them (by the leader:
            # a replica that starts beside a leader leaves it to that one).
            if await leadership.try_acquire():
                try:
                    await scheduler.tick_now()
                except Exception:
                    log.exception("first_scheduler_pass_failed")
            background.start_soon(leadership.run, duties, name="leadership")
            background.start_soon(claim_sweep, db, notifier, name="claim-sweep")
            if db.is_postgres:
                relay = WakeupRelay(settings.database(), notifier)
                background.start_soon(relay.run, name="wakeup-relay")
            try:
                yield
            finally:
                background.cancel_scope.cancel()
                notifier.close()
                db.dispose()

    app = FastAPI(
        title="flowagent server",
        version=__version__,
        description=_DESCRIPTION,
        lifespan=lifespan,
        docs_url="/docs",
    )
    db = Database(settings.database())
    notifier = ClaimWakeups()
    scheduling = scheduling or SchedulerConfig(
        horizon=timedelta(seconds=settings.schedule_horizon_seconds),
        max_runs=settings.schedule_max_runs,
        late_after=timedelta(seconds=settings.late_after_seconds),
        missed_after=timedelta(seconds=settings.missed_after_seconds),
    )
    scheduler = Scheduler(db, notifier, scheduling, clock)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    webhooks = DeliveryWorker(
        db,
        notifying or NotificationConfig(),
        f"http://{host}:{settings.port}",
        clock,
        allow_private=settings.webhook_allow_private,
    )
    app.state.settings = settings
    app.state.db = db
    app.state.notifier = notifier
    app.state.scheduler = scheduler
    app.state.bundles = BundleStore(db, settings.home, settings.bundle_max_bytes)
    app.state.log_feed = LogFeed()

    for module in API_MODULES:
        # The health check answers without the API key: monitors and load balancers ask it.
        keyed = [] if module is health else [Depends(require_api_key)]
        app.include_router(module.router, prefix="/api", dependencies=keyed)
    app.include_router(web.router)  # the UI at /, its files under /ui/
    install_metrics(app, db, settings.lease_seconds)  # GET /metrics, request counters
    # A 413 before an oversized body is read into memory; bundles stream to disk, bounded apart.
    app.add_middleware(BodyLimit, exempt=("/api/bundles",))
    # Outermost: a forged request from another site is refused before anything reads it.
    app.add_middleware(RefuseCrossSite, loopback_names_only=settings.api_key is None)

    app.add_exception_handler(OperationalError, _database_unavailable)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(OverflowError, _out_of_range)
    app.add_exception_handler(DataError, _out_of_range)  # PostgreSQL's own check: a 32-bit INTEGER
    return app


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """SQLite busy or full: a 503 the client retries, never a 500."""
    reason = str(getattr(exc, "orig", exc)).lower()
    if is_busy(exc):
        detail = "the database is busy (locked by another writer); retry shortly"
    elif "full" in reason:
        detail = "the database disk is full; free some space on the server, then retry"
    else:
        detail = f"the database is unavailable ({reason}); retry shortly"
    log.warning("database_unavailable", method=request.method, path=request.url.path, reason=reason)
    return JSONResponse(
        {"detail": detail},
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        headers={"Retry-After": "1"},
    )


async def _out_of_range(request: Request, exc: Exception) -> JSONResponse:
    """A number too large for the database's INTEGER (the write was rolled back): a 422."""
    reason = " ".join(str(getattr(exc, "orig", exc)).split())
    return JSONResponse(
        {"detail": f"invalid request: a number is out of range ({reason})"},
        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
    )


async def _invalid_request(request: Request, exc: Exception) -> JSONResponse:
    """A 422 whose detail is one readable sentence, like every other error we answer."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    problems = []
    for error in errors:
        where = ".".join(str(part) for part in error.get("loc", ()))
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        problems.append(f"{where}: {message}" if where else message)
    return JSONResponse(
        {"detail": "invalid request: " + "; ".join(problems)},
        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
    )
