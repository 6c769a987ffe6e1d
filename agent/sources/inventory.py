"""What the host's source cache holds, and pruning what has gone unused (`agent sources`)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

from agent.sources.locks import unless_in_use

log = structlog.get_logger("agent.sources")


@dataclass(frozen=True)
class CachedSource:
    kind: str  # "git", "bundle" or "checkout"
    name: str  # the URL, the digest, or "<agent>/<run id>"
    path: Path
    size: int
    last_used: float  # Unix time

    def as_json(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "name": self.name,
            "path": str(self.path),
            "size": self.size,
            "last_used": self.last_used,
        }


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    total = 0
    for directory, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(directory, name)).st_size
    return total


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def inventory(home: Path) -> list[CachedSource]:
    found: list[CachedSource] = []
    git = home / "sources" / "git"
    for meta in sorted(git.glob("*.json")):
        mirror = meta.with_suffix("")
        try:
            url = str(json.loads(meta.read_text()).get("url", "?"))
        except (OSError, ValueError):
            url = "?"
        found.append(CachedSource("git", url, mirror, _size(mirror), _mtime(meta)))
    for archive in sorted((home / "sources" / "bundles").glob("*.tar.gz")):
        digest = "sha256:" + archive.name.removesuffix(".tar.gz")
        found.append(CachedSource("bundle", digest, archive, _size(archive), _mtime(archive)))
    for checkout in sorted(home.glob("agents/*/checkouts/*")):
        name = f"{checkout.parent.parent.name}/{checkout.name}"
        found.append(CachedSource("checkout", name, checkout, _size(checkout), _mtime(checkout)))
    return found


def prune(home: Path, max_idle: float, *, dry_run: bool = False) -> list[CachedSource]:
    """Remove mirrors and bundles unused for ``max_idle`` seconds that no run is reading.

    Checkouts are left to their agents: each removes its own when a run ends, and a dead
    agent's when it starts again.
    """
    cutoff = time.time() - max_idle
    removed = []
    for entry in inventory(home):
        if entry.kind == "checkout" or entry.last_used > cutoff:
            continue
        use = (
            entry.path.with_suffix(".use")
            if entry.kind == "git"
            else entry.path.with_name(entry.path.name.removesuffix(".tar.gz") + ".use")
        )
        with unless_in_use(use) as free:
            if not free:
                continue
            if dry_run:
                removed.append(entry)
                continue
            if entry.kind == "git":
                shutil.rmtree(entry.path, ignore_errors=True)
                entry.path.with_suffix(".json").unlink(missing_ok=True)
            else:
                entry.path.unlink(missing_ok=True)
            removed.append(entry)
    if removed and not dry_run:
        log.info("sources_pruned", count=len(removed), bytes=sum(e.size for e in removed))
    return removed
