"""Request dependencies: the app's database and notifier, and the API-key check.

They are ``async`` although they never await: FastAPI runs a plain ``def`` dependency in its
thread pool, a hop per request that buys nothing here.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from agent.server.bundles import BundleStore
from agent.server.claims import ClaimWakeups
from agent.server.db import Database
from agent.server.settings import ServerSettings


async def get_settings(request: Request) -> ServerSettings:
    settings: ServerSettings = request.app.state.settings
    return settings


async def get_db(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


async def get_notifier(request: Request) -> ClaimWakeups:
    notifier: ClaimWakeups = request.app.state.notifier
    return notifier


async def get_bundles(request: Request) -> BundleStore:
    store: BundleStore = request.app.state.bundles
    return store


DB = Annotated[Database, Depends(get_db)]
Bundles = Annotated[BundleStore, Depends(get_bundles)]
ServerSettingsDep = Annotated[ServerSettings, Depends(get_settings)]
Wakeups = Annotated[ClaimWakeups, Depends(get_notifier)]

# auto_error=False: we answer a missing header ourselves, with a 401 that says what to send.
_bearer = HTTPBearer(auto_error=False, description="the server's AGENT_API_KEY")


async def require_api_key(
    settings: Annotated[ServerSettings, Depends(get_settings)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Refuse the request unless it carries the server's API key (when it has one)."""
    if settings.api_key is None:
        return
    challenge = {"WWW-Authenticate": "Bearer"}
    if credentials is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing API key: this server requires 'Authorization: Bearer <key>' "
            "(set AGENT_API_KEY to the server's key)",
            headers=challenge,
        )
    if not hmac.compare_digest(credentials.credentials.encode(), settings.api_key.encode()):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "wrong API key: the bearer token does not match the server's AGENT_API_KEY",
            headers=challenge,
        )
