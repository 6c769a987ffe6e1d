"""A run's own copy of its code, and what a commit's cached tree is built from.

A run's checkout is a copy of a sealed tree (trees.py): nothing in the mirror or the cache
refers to it, so removing it is ``rm -r`` and an agent SIGKILLed mid-run leaves nothing behind
in the mirror. Each agent keeps its runs' checkouts in its own directory, so the one that
removes the leftovers of its earlier life cannot touch another agent's runs. A commit's tree is
``git archive`` of the mirror, unpacked as it streams, once per commit per host.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tarfile
from pathlib import Path
from uuid import UUID

import structlog

from agent.errors import SourceError

log = structlog.get_logger("agent.sources")


class Checkouts:
    """``agents/<name>/checkouts/``: one directory per run this agent is running."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, run_id: UUID) -> Path:
        return self.directory / str(run_id)

    def remove(self, run_id: UUID) -> None:
        shutil.rmtree(self.path(run_id), ignore_errors=True)

    def listed(self) -> list[UUID]:
        found = []
        with contextlib.suppress(FileNotFoundError):
            for entry in self.directory.iterdir():
                with contextlib.suppress(ValueError):
                    found.append(UUID(entry.name))
        return found

    def remove_all_but(self, keep: set[UUID]) -> list[UUID]:
        """Remove the checkouts of runs not in ``keep`` (an earlier life's dead runs)."""
        removed = [run_id for run_id in self.listed() if run_id not in keep]
        for run_id in removed:
            self.remove(run_id)
        if removed:
            log.info("source_checkouts_removed", count=len(removed))
        return removed


def archive_into(mirror: Path, commit: str, target: Path) -> None:
    """``git archive`` streamed into ``tarfile`` here: one process, not two."""
    git = subprocess.Popen(
        ["git", "--git-dir", str(mirror), "archive", "--format=tar", commit],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert git.stdout is not None and git.stderr is not None
    try:
        # "tar" filter: paths stay inside the target; symlinks are kept as the commit has them
        # (as a git checkout would), wherever they point.
        with tarfile.open(fileobj=git.stdout, mode="r|") as tar:
            tar.extractall(target, filter="tar")
    except (tarfile.TarError, OSError) as exc:
        git.kill()
        git.wait()
        detail = git.stderr.read().decode(errors="replace").strip()
        raise SourceError(f"cannot check out commit {commit}: {detail or exc}") from exc
    finally:
        git.stdout.close()
    err = git.stderr.read().decode(errors="replace").strip()
    git.stderr.close()
    if git.wait() != 0:
        raise SourceError(f"cannot check out commit {commit}: {err}")
