"""Requests a web page elsewhere makes a browser send are refused: it can neither change
anything here nor read anything.

- **Forged requests.** The API takes no cookie, so a forged request carries no credential; but a
  server without an API key needs none, and a body-less ``POST …/cancel`` is a request any page
  may make a browser send (a form, a no-cors fetch). Browsers say where such a request comes from
  (``Origin``, ``Sec-Fetch-Site``); a state-changing request from another origin is refused with
  a 403. The CLI and agents send neither header and are not affected; the UI is same-origin.
- **DNS rebinding.** A page at ``evil.example`` whose name is then pointed at 127.0.0.1 is, to the
  browser, same-origin with this server, so it could read and act freely on a server without an
  API key (which only ever listens on loopback: ``main.py`` refuses otherwise). Such a server
  answers only requests addressed to a loopback name (``Host: localhost``, ``127.0.0.1``,
  ``[::1]``); the rebound page's requests say ``Host: evil.example`` and get a 403. A server with
  a key needs no such check: the other site has no key.
"""

from __future__ import annotations

import ipaddress
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


def addressed_to_loopback(headers: dict[bytes, bytes]) -> bool:
    """Whether the request's Host names this machine's loopback (any port)."""
    host = headers.get(b"host", b"").decode("latin-1").lower()
    if host.startswith("["):
        name = host[1:].split("]", 1)[0]
    else:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class RefuseCrossSite:
    """ASGI middleware: a 403 for a state-changing request a browser sent from another origin
    and, with ``loopback_names_only``, for any request addressed to another name."""

    def __init__(self, app: ASGIApp, *, loopback_names_only: bool) -> None:
        self.app = app
        self.loopback_names_only = loopback_names_only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            detail = None
            if self.loopback_names_only and not addressed_to_loopback(headers):
                host = headers.get(b"host", b"").decode("latin-1")
                detail = (
                    f"request for host {host!r} refused: a server without an API key answers "
                    "only to localhost, 127.0.0.1 or [::1] (another name may be a DNS-rebinding "
                    "page); use one of those, or give the server an API key (AGENT_API_KEY)"
                )
            reason = cross_site_reason(scope["method"], headers)
            if detail is None and reason is not None:
                detail = (
                    f"cross-site request refused ({reason}): change things here from this "
                    "server's own UI, the CLI or the API"
                )
            if detail is not None:
                body = json.dumps({"detail": detail}).encode()
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
