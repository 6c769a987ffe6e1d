"""The spool: reports the server could not take yet, kept on disk and delivered in order.

A state report or a log batch that still fails after the HTTP layer's retries is written here
(one JSON file per report, fsynced, named by a sequence number) instead of being dropped. A
side task delivers the spool oldest first when the server answers again — also after an agent
restart, since the files outlive the process. Once a run has anything spooled, its later
reports are spooled too, so the server never sees them out of order.

A damaged file (truncated by a full disk, a stray one left by a person or a crash mid-write) is
moved to ``damaged/`` with a warning, not delivered and not fatal: under systemd a spool that
stops the agent from starting is a crash loop that delivers nothing at all.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import structlog

from agent.errors import DamagedFile

log = structlog.get_logger("agent.spool")


@dataclass(frozen=True)
class Entry:
    path: Path
    kind: str  # "state" | "logs" | "info"
    run_id: UUID
    payload: dict[str, Any]


Deliver = Callable[[Entry], Awaitable[None]]

# What put() names a file; the sequence number's fixed width makes name order delivery order.
_NAME = re.compile(r"(?P<seq>\d{12})-(?P<kind>[a-z]+)-(?P<run>[0-9a-f-]{36})\.json")
DAMAGED = "damaged"


class Spool:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        # Private: reports carry log lines and state messages of the runs.
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._entries: list[Path] = []
        self._runs: set[UUID] = set()
        for path in sorted(directory.iterdir()):
            if path.name == DAMAGED and path.is_dir():
                continue
            if _parse_name(path) is None:
                self._move_aside(path, "not a spooled report (a stray or half-written file)")
                continue
            self._entries.append(path)
            self._runs.add(_run_of(path))
        self._next = int(self._entries[-1].name[:12]) + 1 if self._entries else 0

    def __len__(self) -> int:
        return len(self._entries)

    def holds(self, run_id: UUID) -> bool:
        return run_id in self._runs

    def run_ids(self) -> set[UUID]:
        return set(self._runs)

    def put(self, kind: str, run_id: UUID, payload: dict[str, Any]) -> None:
        path = self.directory / f"{self._next:012d}-{kind}-{run_id}.json"
        self._next += 1
        tmp = path.with_suffix(".tmp")
        with tmp.open("w") as handle:
            json.dump(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
        self._entries.append(path)
        self._runs.add(run_id)
        log.warning("report_spooled", kind=kind, run_id=str(run_id), spooled=len(self._entries))

    async def drain(self, deliver: Deliver) -> int:
        """Deliver oldest first; stop at the first failure (the server is still away).

        ``deliver`` raises to say "try again later"; it returns normally both when the server
        took the report and when it refused it for good (the entry is then dropped).
        """
        delivered = 0
        while self._entries:
            path = self._entries[0]
            run_id = _run_of(path)
            try:
                await deliver(_read(path))
                path.unlink(missing_ok=True)
                delivered += 1
            except DamagedFile as exc:
                # Set aside rather than retried: it would fail the same way for ever and hold
                # back every report behind it.
                self._move_aside(path, exc.message)
            self._entries.pop(0)
            if not any(_run_of(p) == run_id for p in self._entries):
                self._runs.discard(run_id)
        return delivered

    def _move_aside(self, path: Path, why: str) -> None:
        aside_dir = self.directory / DAMAGED
        aside = aside_dir / path.name
        try:
            aside_dir.mkdir(exist_ok=True, mode=0o700)
            for n in range(1, 1000):
                if not aside.exists():
                    break
                aside = aside_dir / f"{path.name}.{n}"
            path.replace(aside)
        except OSError as exc:
            # Left where it is, and out of this life's list: the next start tries again.
            why = f"{why}; could not move it aside either ({exc})"
        log.warning(
            "spool_entry_damaged",
            path=str(path),
            moved_to=str(aside),
            error=why,
            hint="inspect and delete it; the report it held, if any, is not delivered",
        )


def _parse_name(path: Path) -> re.Match[str] | None:
    match = _NAME.fullmatch(path.name)
    if match is None or not path.is_file():
        return None
    try:
        UUID(match["run"])
    except ValueError:
        return None
    return match


def _run_of(path: Path) -> UUID:
    return UUID(path.name[-41:-5])  # the UUID before ".json", as _NAME checked at start-up


def _read(path: Path) -> Entry:
    match = _NAME.fullmatch(path.name)
    if match is None:
        raise DamagedFile(f"{path.name} is not a spooled report's name")
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DamagedFile(f"cannot read {path.name}: {exc}") from exc
    if not isinstance(payload, dict):
        raise DamagedFile(f"{path.name} does not hold a JSON object")
    return Entry(path, match["kind"], UUID(match["run"]), payload)
