"""Health: open even when the server requires an API key."""

from __future__ import annotations

from fastapi import APIRouter, Request

from agent import __version__
from agent.models import Health

router = APIRouter(tags=["health"])


@router.get("/health", summary="Is the server up (and is it ours, not Prefect's)?")
async def health(request: Request) -> Health:
    # Before the lifespan has made it (only in-process test clients get here that early) the
    # server leads nothing yet.
    leadership = getattr(request.app.state, "leadership", None)
    leader = leadership is not None and leadership.is_leader
    return Health(status="ok", version=__version__, leader=leader)
