"""The spool: reports the server could not take yet, kept on disk and delivered in order.

A state report or a log batch that still fails after the HTTP layer's retries is written here
(one JSON file per report, fsynced, named by a sequence number) instead of being dropped. A
side task delivers the spool oldest first when the server answers again — also after an agent
restart, since the files outlive the process. Once a run has anything spooled, its later
reports are spooled too, so the server never sees them out of order.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import structlog

log = structlog.get_logger("agent.spool")


@dataclass(frozen=True)
class Entry:
    path: Path
    kind: str  # "state" | "logs" | "info"
    run_id: UUID
    payload: dict[str, Any]


Deliver = Callable[[Entry], Awaitable[None]]


class Spool:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._entries = sorted(directory.glob("*.json"))
        self._next = int(self._entries[-1].stem.split("-")[0]) + 1 if self._entries else 0
        self._runs = {UUID(p.stem.split("-", 2)[2]) for p in self._entries}

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
            _, kind, run = path.stem.split("-", 2)
            entry = Entry(path, kind, UUID(run), json.loads(path.read_text()))
            await deliver(entry)
            path.unlink(missing_ok=True)
            self._entries.pop(0)
            delivered += 1
            if not any(p.stem.endswith(run) for p in self._entries):
                self._runs.discard(entry.run_id)
        return delivered
