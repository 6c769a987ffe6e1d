"""A run's own copy of one commit: ``git archive`` of the mirror, unpacked as it streams.

An export, not a clone or a worktree: nothing in the mirror refers to it, so removing it is
``rm -r`` and an agent SIGKILLed mid-run leaves nothing behind in the mirror. Each agent keeps
its runs' checkouts in its own directory, so the one that removes the leftovers of its earlier
life cannot touch another agent's runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import tarfile
from pathlib import Path
from uuid import UUID

import structlog

from agent.errors import SourceError

log = structlog.get_logger("agent.sources")

#: An export that takes longer is given up (a huge repository on a slow disk).
EXPORT_TIMEOUT_SECONDS = 300.0


class Checkouts:
    """``agents/<name>/checkouts/``: one directory per run this agent is running."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, run_id: UUID) -> Path:
        return self.directory / str(run_id)

    async def export(self, mirror: Path, commit: str, run_id: UUID) -> Path:
        """Unpack ``commit`` of ``mirror`` into the run's directory (emptied first)."""
        target = self.path(run_id)
        self.remove(run_id)
        # Readable by anyone: a container may run the flow as any user (runners/docker.py).
        target.mkdir(parents=True, mode=0o755)
        try:
            await asyncio.wait_for(
                asyncio.to_thread(_export, mirror, commit, target), EXPORT_TIMEOUT_SECONDS
            )
        except BaseException:
            self.remove(run_id)
            raise
        return target

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


def _export(mirror: Path, commit: str, target: Path) -> None:
    """``git archive`` streamed into ``tarfile`` here: one process per run start, not two."""
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
