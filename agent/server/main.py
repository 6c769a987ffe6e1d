"""Running the server: safety checks, the listening socket, migrations, uvicorn, and the
garbage collector's settings for a process that holds many long polls."""

from __future__ import annotations

import errno
import gc
import ipaddress
import socket
from typing import TYPE_CHECKING

from agent.errors import ConfigError
from agent.server import require_installed
from agent.server.settings import ServerSettings

if TYPE_CHECKING:
    from agent.server.claims import ClaimWakeups

# Held long polls are released at shutdown, so little should be left to wait for.
GRACEFUL_SHUTDOWN_SECONDS = 3
# Longer than clients keep an idle connection (httpx: 5 s, the agent's heartbeat interval):
# the client closes it first. At uvicorn's default of 5 s the two closed it in the same instant
# and a heartbeat sent on it as the server closed it failed (ReadError).
KEEP_ALIVE_SECONDS = 75
# Python's full collections look at every object alive, and stop the event loop meanwhile:
# under 1,000 agents (~400,000 objects, ~230 for each agent's connections and held poll)
# each took up to 330 ms, every 3-5 s. Frozen after start, the app's own ~165,000 objects
# are never looked at again; and a full collection waits for at least 100 of the middle
# generation (Python's default: 10), besides the usual rule (a quarter more objects
# survived since the last).
# docs/PERFORMANCE.md, "The load generator's share, the garbage collector, and a convoy".
GC_THRESHOLDS = (700, 10, 100)


def serve(settings: ServerSettings) -> None:
    """Run the server in the foreground until SIGINT/SIGTERM.

    Raises:
        ConfigError: the server extra is missing, the host is exposed without an API key, or
            the port cannot be bound.
    """
    require_installed()
    _refuse_exposure_without_key(settings)
    sock = _bind(settings.host, settings.port)
    try:
        _run(settings, sock)
    finally:
        sock.close()


def _run(settings: ServerSettings, sock: socket.socket) -> None:
    import uvicorn

    from agent.server.app import create_app
    from agent.server.schema import migrate

    # A database that is down, a wrong URL or a newer schema: a ConfigError, before listening.
    migrate(settings.home, settings.database())
    app = create_app(settings, migrate_on_startup=False)
    config = uvicorn.Config(
        app,
        log_level="warning",
        log_config=None,  # its records go through our logging (agent/logs.py), not its own
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
    )
    host, port = sock.getsockname()[:2]
    shown_host = f"[{host}]" if ":" in host else host
    banner = (
        f"flowagent server listening on http://{shown_host}:{port} (API at /api, docs at /docs)"
    )

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:
                _settle_gc()
                print(banner, flush=True)

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            # Answer held long polls now, so that they do not hold up the graceful shutdown.
            notifier: ClaimWakeups = app.state.notifier
            notifier.close()
            await super().shutdown(sockets)

    Server(config).run(sockets=[sock])


def _settle_gc() -> None:
    """Collect what starting left behind, then keep what is alive now out of every later
    collection (it lives as long as the process), and make full collections rarer."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def _refuse_exposure_without_key(settings: ServerSettings) -> None:
    if settings.api_key is None and not _is_loopback(settings.host):
        raise ConfigError(
            f"refusing to listen on {settings.host} without an API key",
            hint="set AGENT_API_KEY or use --host 127.0.0.1",
        )


def _bind(host: str, port: int) -> socket.socket:
    """Bind the listening socket ourselves, so that a busy port is a clear error up front."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(
            f"cannot listen on {host}: {exc.strerror}",
            hint="pass --host with an IP address or a name that resolves",
        ) from exc
    # "localhost" may resolve to ::1 first; clients mostly dial 127.0.0.1, so prefer IPv4.
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    # A restart must not fail because the previous run's connections linger in TIME_WAIT.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"port {port} is already in use on {host}",
                hint="stop the other process or pass --port",
            ) from exc
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror}",
            hint="pass another --host or --port",
        ) from exc
    return sock
