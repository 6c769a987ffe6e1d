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
from agent.sources.trees import Trees, remove_tree

log = structlog.get_logger("agent.sources")


@dataclass(frozen=True)
class CachedSource:
    kind: str  # "git", "tree" (one commit of a mirror), "bundle" or "checkout"
    name: str  # the URL, "<URL>@<commit>", the digest, or "<agent>/<run id>"
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
        trees = Trees(home / "sources" / "trees" / "git" / mirror.name)
        for commit in trees.names():
            tree = trees.path(commit)
            found.append(CachedSource("tree", f"{url}@{commit}", tree, _size(tree), _mtime(tree)))
    bundles = home / "sources" / "bundles"
    for archive in sorted(bundles.glob("*.tar.gz")):
        name = archive.name.removesuffix(".tar.gz")
        tree = home / "sources" / "trees" / "bundles" / name
        # Runs read the tree, not the archive: the later of the two is the last use.
        used = max(_mtime(archive), _mtime(tree))
        size = _size(archive) + (_size(tree) if tree.is_dir() else 0)
        found.append(CachedSource("bundle", "sha256:" + name, archive, size, used))
    for checkout in sorted(home.glob("agents/*/checkouts/*")):
        name = f"{checkout.parent.parent.name}/{checkout.name}"
        found.append(CachedSource("checkout", name, checkout, _size(checkout), _mtime(checkout)))
    return found


def prune(home: Path, max_idle: float, *, dry_run: bool = False) -> list[CachedSource]:
    """Remove mirrors, commit trees and bundles unused for ``max_idle`` seconds that no run is
    reading (a mirror's ``.use`` lock covers its trees too: a run holds it while it copies).

    Checkouts are left to their agents: each removes its own when a run ends, and a dead
    agent's when it starts again.
    """
    cutoff = time.time() - max_idle
    removed = []
    # Trees before their mirrors: a mirror that goes takes its remaining trees with it.
    entries = sorted(inventory(home), key=lambda e: e.kind != "tree")
    for entry in entries:
        if entry.kind == "checkout" or entry.last_used > cutoff:
            continue
        if entry.kind == "tree":  # sources/trees/git/<key>/<commit>: the mirror's lock
            use = home / "sources" / "git" / f"{entry.path.parent.name}.use"
        elif entry.kind == "git":
            use = entry.path.with_suffix(".use")
        else:
            use = entry.path.with_name(entry.path.name.removesuffix(".tar.gz") + ".use")
        with unless_in_use(use) as free:
            if not free:
                continue
            if dry_run:
                removed.append(entry)
                continue
            if entry.kind == "tree":
                Trees(entry.path.parent).discard(entry.path.name)
                entry.path.parent.joinpath(f"{entry.path.name}.lock").unlink(missing_ok=True)
            elif entry.kind == "git":
                shutil.rmtree(entry.path, ignore_errors=True)
                remove_tree(home / "sources" / "trees" / "git" / entry.path.name)
                entry.path.with_suffix(".json").unlink(missing_ok=True)
            else:
                name = entry.path.name.removesuffix(".tar.gz")
                trees = Trees(home / "sources" / "trees" / "bundles")
                trees.discard(name)
                trees.directory.joinpath(f"{name}.lock").unlink(missing_ok=True)
                entry.path.unlink(missing_ok=True)
            removed.append(entry)
    if removed and not dry_run:
        log.info("sources_pruned", count=len(removed), bytes=sum(e.size for e in removed))
    return removed
