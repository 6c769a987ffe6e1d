"""The web UI: static files shipped inside the package, served at ``/`` and ``/ui/…``.

Nothing is built or fetched at install or run time: the files are plain HTML, CSS and ES
modules that call the same ``/api`` the CLI calls. They are public (they hold no data); the data
behind them needs the API key when the server has one. A strict Content-Security-Policy allows
only scripts and styles from this origin, so even a line of log text that slipped past the
UI's escaping could not run as a script.
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import Response

router = APIRouter(include_in_schema=False)

_ASSETS = resources.files("agent.server") / "ui"
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
# connect-src 'self': the UI talks to this server only; frame-ancestors 'none': no clickjacking.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # Small files, and a new version must show at once after an upgrade.
    "Cache-Control": "no-cache",
}


def _asset(name: str) -> Response:
    suffix = name[name.rfind(".") :] if "." in name else ""
    # Only plain file names under ui/ and ui/js/: no "..", no absolute paths.
    parts = name.split("/")
    if suffix not in _TYPES or len(parts) > 2 or any(p in ("", ".", "..") for p in parts):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no UI file {name!r}")
    path = _ASSETS.joinpath(*parts)
    if not path.is_file():
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no UI file {name!r}")
    return Response(path.read_bytes(), media_type=_TYPES[suffix], headers=HEADERS)


@router.get("/")
async def index() -> Response:
    return _asset("index.html")


@router.get("/ui/{name:path}")
async def asset(name: str) -> Response:
    return _asset(name)
