"""The server's settings: built once by the CLI (or ``__main__``) and passed down."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from agent.config import Settings
from agent.errors import ConfigError

if TYPE_CHECKING:
    from sqlalchemy import URL

# Every default is the settings object's (agent/config.py): written once.
_DEFAULT = Settings


@dataclass(frozen=True)
class ServerSettings:
    """Where the server keeps its database and how it listens.

    Attributes:
        home: the agent home directory; the database is ``home / "flowagent.db"`` unless
            ``database_url`` names another.
        database_url: a PostgreSQL database (``postgresql+psycopg://…``) that several server
            replicas may share, or None for SQLite in ``home``.
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
    database_url: str | None = field(default=None, repr=False)
    lease_seconds: float = _DEFAULT.lease_seconds
    lease_check_seconds: float = 1.0
    schedule_horizon_seconds: float = _DEFAULT.schedule_horizon_seconds
    schedule_max_runs: int = _DEFAULT.schedule_max_runs
    late_after_seconds: float = _DEFAULT.late_after_seconds
    missed_after_seconds: float = _DEFAULT.missed_after_seconds
    webhook_allow_private: bool = _DEFAULT.webhook_allow_private
    # The largest bundle (``deployment create --upload``) the server stores.
    bundle_max_bytes: int = _DEFAULT.bundle_max_size
    # A bundle no deployment and no unfinished run names is deleted this long after it was
    # last uploaded or named by a deployment.
    bundle_retention_seconds: float = _DEFAULT.bundle_retention

    @property
    def database_path(self) -> Path:
        return database_path(self.home)

    def database(self) -> URL:
        """The database's URL: ``database_url``, else the SQLite file in ``home``.

        Raises:
            ConfigError: ``database_url`` is not a URL of a database the server runs on.
        """
        return database_target(self.home, self.database_url)


def from_settings(settings: Settings) -> ServerSettings:
    """The server's part of the one settings object the CLI built."""
    return ServerSettings(
        home=settings.home,
        host=settings.server_host,
        port=settings.server_port,
        api_key=settings.api_key,
        database_url=settings.database_url,
        lease_seconds=settings.lease_seconds,
        schedule_horizon_seconds=settings.schedule_horizon_seconds,
        schedule_max_runs=settings.schedule_max_runs,
        late_after_seconds=settings.late_after_seconds,
        missed_after_seconds=settings.missed_after_seconds,
        webhook_allow_private=settings.webhook_allow_private,
        bundle_max_bytes=settings.bundle_max_size,
        bundle_retention_seconds=settings.bundle_retention,
    )


def database_path(home: Path) -> Path:
    return home / "flowagent.db"


def database_target(home: Path, database_url: str | None) -> URL:
    """The URL of the database ``database_url`` names, else of the SQLite file in ``home``."""
    from agent.server.engines import parse_database_url, sqlite_url

    if database_url is None:
        return sqlite_url(database_path(home))
    try:
        return parse_database_url(database_url)
    except ValueError as exc:
        raise ConfigError(
            f"bad database_url: {exc}", hint="set AGENT_DATABASE_URL or --database-url"
        ) from exc
