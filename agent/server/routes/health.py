"""Health: open even when the server requires an API key."""

from __future__ import annotations

from fastapi import APIRouter

from agent import __version__
from agent.models import Health

router = APIRouter(tags=["health"])


@router.get("/health", summary="Is the server up (and is it ours, not Prefect's)?")
async def health() -> Health:
    return Health(status="ok", version=__version__)
