"""The server's settings: built once by the CLI (or ``__main__``) and passed down."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ServerSettings:
    """Where the server keeps its database and how it listens.

    Attributes:
        home: the agent home directory; the database is ``home / "flowagent.db"``.
        host: interface to listen on; anything but loopback requires ``api_key``.
        port: TCP port.
        api_key: when set, every ``/api`` route but health needs ``Authorization: Bearer <key>``.
    """

    home: Path
    host: str = "127.0.0.1"
    port: int = 4200
    api_key: str | None = None

    @property
    def database_path(self) -> Path:
        return database_path(self.home)


def database_path(home: Path) -> Path:
    return home / "flowagent.db"
