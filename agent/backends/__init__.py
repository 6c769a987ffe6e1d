"""Work-queue API clients. These are the only modules that import httpx.

:func:`make_backend` gives the daemon the client for the kind of server at ``api_url``: ours
(:mod:`agent.backends.native`) or Prefect's (:mod:`agent.backends.prefect`). With
``backend = "auto"`` it asks ``GET {api_url}/health``: our server answers a JSON object with
``"server": "flowagent"``, Prefect answers ``true``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import structlog

from agent.errors import ApiError, ConfigError, ServerUnavailable

if TYPE_CHECKING:
    from agent.backends.base import Backend
    from agent.backends.native import NativeBackend
    from agent.backends.prefect import PrefectBackend
    from agent.config import Settings

log = structlog.get_logger("agent.backends")


def native_backend(settings: Settings, *, retry_for: float | None = None) -> NativeBackend:
    """A client of the embedded server, configured from settings."""
    from agent.backends.http import HttpClient
    from agent.backends.native import NativeBackend

    http = HttpClient(
        settings.api_urls,
        api_key=settings.api_key,
        timeout=settings.request_timeout_seconds,
        retry_for=settings.startup_timeout_seconds if retry_for is None else retry_for,
    )
    return NativeBackend(http)


def prefect_backend(
    settings: Settings, *, runner_options: Mapping[str, Any] | None = None
) -> PrefectBackend:
    """A client of a Prefect server: bearer auth from ``api_key`` (Prefect Cloud), basic auth
    from ``api_auth_string`` (``user:pass``, a self-hosted server's
    PREFECT_SERVER_API_AUTH_STRING)."""
    from agent.backends.http import HttpClient
    from agent.backends.prefect import API_VERSION, PrefectBackend

    auth: tuple[str, str] | None = None
    if settings.api_auth_string:
        user, sep, password = settings.api_auth_string.partition(":")
        if not sep:
            raise ConfigError(
                "api_auth_string must look like USER:PASSWORD",
                hint="set AGENT_API_AUTH_STRING to the server's PREFECT_SERVER_API_AUTH_STRING",
            )
        auth = (user, password)
    http = HttpClient(
        settings.api_urls,
        api_key=settings.api_key,
        auth=auth,
        headers={"X-PREFECT-API-VERSION": API_VERSION},
        timeout=settings.request_timeout_seconds,
        retry_for=settings.startup_timeout_seconds,
    )
    return PrefectBackend(
        http,
        # What Prefect's engine is told (PREFECT_API_URL takes one URL).
        api_url=settings.api_urls[0],
        api_key=settings.api_key,
        auth_string=settings.api_auth_string,
        runner_options=runner_options,
        home=settings.home,
        prefetch_seconds=settings.prefetch_seconds,
        pool=settings.pool,
        work_queues=settings.work_queues,
    )


async def detect_backend(settings: Settings) -> str:
    """ "native" or "prefect": what answers ``GET {api_url}/health`` (open on both servers)."""
    from agent.backends.http import HttpClient

    http = HttpClient(
        settings.api_urls,
        timeout=settings.request_timeout_seconds,
        retry_for=settings.startup_timeout_seconds,
    )
    hint = "check --api-url / AGENT_API_URL (it ends in /api), or name the kind with --backend"
    try:
        response = await http.request("GET", "health")
        body = response.json()
    except ServerUnavailable as exc:
        raise ServerUnavailable(
            f"{exc.message}; gave up after {settings.startup_timeout_seconds:g}s",
            hint="start the server (`agent server start` or `prefect server start`), or point "
            "--api-url / AGENT_API_URL at it",
        ) from exc
    except ApiError as exc:
        raise ConfigError(
            f"cannot tell which kind of server is at {settings.api_url}: "
            f"GET /health failed: {exc.message}",
            hint=hint,
        ) from exc
    except ValueError:
        raise ConfigError(
            f"cannot tell which kind of server is at {settings.api_url}: /health is not JSON",
            hint=hint,
        ) from None
    finally:
        await http.aclose()
    if isinstance(body, dict) and body.get("server") == "flowagent":
        return "native"
    if body is True:
        return "prefect"
    raise ConfigError(
        f"cannot tell which kind of server is at {settings.api_url}: /health answered "
        f"{str(body)[:100]!r}",
        hint=hint,
    )


async def make_backend(
    settings: Settings, *, runner_options: Mapping[str, Any] | None = None
) -> Backend:
    """The daemon's client for the server at ``settings.api_url``.

    ``runner_options`` are the agent's own (``agent start --runner-option``): for a Prefect
    server, ``python`` names the interpreter that runs Prefect's engine (the daemon applies
    them all as defaults of the runs' subprocess runner, whichever the server).
    """
    kind = settings.backend
    if kind == "auto":
        kind = await detect_backend(settings)
        log.info("backend_detected", backend=kind, api_url=settings.api_url)
    if kind == "prefect":
        return prefect_backend(settings, runner_options=runner_options)
    if settings.pool is not None:
        raise ConfigError(
            f"--pool {settings.pool}: {settings.api_url} is a flowagent server, which has work "
            "queues and no pools",
            hint="serve one of its queues by id: agent start QUEUE_ID (agent work-queue ls)",
        )
    return native_backend(settings)
