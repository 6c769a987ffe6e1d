"""Cross-site requests refused: a web page elsewhere cannot make a browser change anything here.

The API takes no cookie, so a forged request carries no credential; but a server without an
API key needs none, and a body-less ``POST …/cancel`` is a request any page may make a browser
send (a form, a no-cors fetch). Browsers say where such a request comes from (``Origin``,
``Sec-Fetch-Site``); a state-changing request from another origin is refused with a 403. The
CLI and agents send neither header and are not affected; the UI is same-origin.
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def cross_site_reason(method: str, headers: dict[bytes, bytes]) -> str | None:
    """Why a request must be refused as cross-site, or None."""
    if method in _SAFE_METHODS:
        return None
    fetch_site = headers.get(b"sec-fetch-site", b"").decode("latin-1").lower()
    if fetch_site:
        # Set by the browser itself (a page's script cannot), and right behind a proxy that
        # rewrites Host, so it is trusted first. "same-site" is refused too: another port of
        # this host is another application.
        return None if fetch_site in ("same-origin", "none") else f"Sec-Fetch-Site: {fetch_site}"
    # An older browser: compare its Origin with the Host it sent.
    origin = headers.get(b"origin")
    if origin is None:
        return None  # not a browser's cross-origin request (the CLI, an agent, curl)
    text = origin.decode("latin-1")
    host = headers.get(b"host", b"").decode("latin-1").lower()
    # "null" (a sandboxed frame, a file: page, a redirect) has no host and never matches.
    if urlsplit(text).netloc.lower() != host or not host:
        return f"Origin {text!r} is not this server ({host or 'no Host header'})"
    return None


class RefuseCrossSite:
    """ASGI middleware: a 403 for a state-changing request a browser sent from another origin."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            reason = cross_site_reason(scope["method"], dict(scope["headers"]))
            if reason is not None:
                body = json.dumps(
                    {
                        "detail": f"cross-site request refused ({reason}): change things here "
                        "from this server's own UI, the CLI or the API"
                    }
                ).encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": 403,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
