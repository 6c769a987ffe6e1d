"""The server's settings: built once by the CLI (or ``__main__``) and passed down."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from agent.config import Settings

# Every default is the settings object's (agent/config.py): written once.
_DEFAULT = Settings


@dataclass(frozen=True)
class ServerSettings:
    """Where the server keeps its database and how it listens.

    Attributes:
        home: the agent home directory; the database is ``home / "flowagent.db"``.
        host: interface to listen on; anything but loopback requires ``api_key``.
        port: TCP port.
        api_key: when set, every ``/api`` route but health needs ``Authorization: Bearer <key>``.
        lease_seconds: an agent's runs are resolved (CRASHED, or retried) this long after its
            last heartbeat.
        lease_check_seconds: how often expired leases are looked for.
        webhook_allow_private: let webhooks target loopback, private, link-local (and other
            non-public) addresses; off, so that whoever may create a notification cannot make
            the server call its own host's or network's internal services.
    """

    home: Path
    host: str = _DEFAULT.server_host
    port: int = _DEFAULT.server_port
    api_key: str | None = field(default=None, repr=False)
    lease_seconds: float = _DEFAULT.lease_seconds
    lease_check_seconds: float = 1.0
    schedule_horizon_seconds: float = _DEFAULT.schedule_horizon_seconds
    schedule_max_runs: int = _DEFAULT.schedule_max_runs
    late_after_seconds: float = _DEFAULT.late_after_seconds
    missed_after_seconds: float = _DEFAULT.missed_after_seconds
    webhook_allow_private: bool = _DEFAULT.webhook_allow_private
    # The largest bundle (``deployment create --upload``) the server stores.
    bundle_max_bytes: int = _DEFAULT.bundle_max_size

    @property
    def database_path(self) -> Path:
        return database_path(self.home)


def from_settings(settings: Settings) -> ServerSettings:
    """The server's part of the one settings object the CLI built."""
    return ServerSettings(
        home=settings.home,
        host=settings.server_host,
        port=settings.server_port,
        api_key=settings.api_key,
        lease_seconds=settings.lease_seconds,
        schedule_horizon_seconds=settings.schedule_horizon_seconds,
        schedule_max_runs=settings.schedule_max_runs,
        late_after_seconds=settings.late_after_seconds,
        missed_after_seconds=settings.missed_after_seconds,
        webhook_allow_private=settings.webhook_allow_private,
        bundle_max_bytes=settings.bundle_max_size,
    )


def database_path(home: Path) -> Path:
    return home / "flowagent.db"
