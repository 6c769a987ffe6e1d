"""Work-queue API clients. These are the only modules that import httpx."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent.backends.native import NativeBackend
    from agent.config import Settings


def native_backend(settings: Settings, *, retry_for: float | None = None) -> NativeBackend:
    """A client of the embedded server, configured from settings."""
    from agent.backends.http import HttpClient
    from agent.backends.native import NativeBackend

    http = HttpClient(
        settings.api_url,
        api_key=settings.api_key,
        timeout=settings.request_timeout_seconds,
        retry_for=settings.startup_timeout_seconds if retry_for is None else retry_for,
    )
    return NativeBackend(http)
