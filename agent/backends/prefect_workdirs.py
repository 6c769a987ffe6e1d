"""Each Prefect run's own working directory, made fresh and removed when the run ends.

Prefect's engine fetches a deployment's code into its current directory: ``git_clone`` clones
into ``<cwd>/<repo>`` (and pulls into it again if it is there), Prefect 2 copies a local
deployment's ``path`` into ``.`` and imports the entrypoint from it (``.`` is first on
``sys.path``). Started in one shared directory, concurrent runs overwrite each other's code and
a run can execute another deployment's flow and be reported COMPLETED. Prefect's own consumers
never share one: the 3.x process worker (``prefect/workers/process.py``, ``ProcessWorker.run``)
and 2.x's ``Process`` infrastructure (``prefect/infrastructure/process.py``, ``Process.run``)
start the engine in ``tempfile.TemporaryDirectory(suffix="prefect")`` unless ``working_dir``
names a directory, and remove it when the process has ended.

So does the agent, under its own directory (``$AGENT_HOME/agents/<name>/workdirs/<run id>``)
rather than the system's temporary one: an agent killed while runs execute leaves their
directories behind, and its next life (one live agent per name) must find them to take the runs
over, or to remove what is left of runs that ended meanwhile (:meth:`RunDirs.leftovers`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from uuid import UUID

import structlog

from agent.fence import FenceDir

log = structlog.get_logger("agent.prefect")

#: Prefect states in which a run's process may still be working in its directory (a flow
#: paused without suspending waits in its process).
LIVE_STATES = frozenset({"PENDING", "RUNNING", "CANCELLING", "PAUSED"})


class RunDirs:
    """The working directories of one agent's Prefect runs, one per run, named by its id."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self._root: Path | None = None

    def bind(self, agent_name: str) -> None:
        """Known once the agent registers: the directory is the agent name's, like its fence."""
        self._root = FenceDir.for_agent(self.home, agent_name).directory / "workdirs"

    @property
    def root(self) -> Path:
        if self._root is None:
            raise RuntimeError("RunDirs.bind(agent name) must come before any run")
        return self._root

    def path(self, run_id: UUID) -> Path:
        return self.root / str(run_id)

    def create(self, run_id: UUID) -> Path:
        """An empty directory for the run. Anything there already is a leftover of an earlier
        claim of the same run (handed back, paused and rescheduled…) whose process has ended."""
        path = self.path(run_id)
        if path.exists():
            _rmtree(path)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.mkdir(mode=0o700)
        return path

    def remove(self, run_id: UUID) -> None:
        """Remove the run's directory (its process has ended); nothing when it has none."""
        if self._root is None:
            return
        path = self.path(run_id)
        if path.exists():
            _rmtree(path)
            log.debug("run_workdir_removed", run_id=str(run_id))

    def leftovers(self) -> list[UUID]:
        """Runs that have a directory here (an earlier life's, or this one's)."""
        if self._root is None or not self._root.is_dir():
            return []
        found = []
        for entry in self._root.iterdir():
            with contextlib.suppress(ValueError):
                found.append(UUID(entry.name))
        return found

    def in_use(self, run_ids: Iterable[UUID]) -> set[UUID]:
        """Of ``run_ids``, those whose directory is some live process's working directory (or
        holds it): a run that outlived what the server says of it keeps its files."""
        paths = {run_id: os.path.realpath(self.path(run_id)) for run_id in run_ids}
        if not paths:
            return set()
        used: set[UUID] = set()
        for cwd in _process_cwds():
            for run_id, path in paths.items():
                if cwd == path or cwd.startswith(path + os.sep):
                    used.add(run_id)
        return used


def _process_cwds() -> list[str]:
    found = []
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    found.append(os.readlink(f"/proc/{entry.name}/cwd"))
    return found


def _rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    if path.exists():
        # A flow may leave directories it cannot write to (chmod -w): make them writable and
        # try once more. What still fails is logged, never raised: a directory left behind
        # must not fail a run's report.
        for parent, _dirs, _files in os.walk(path):
            with contextlib.suppress(OSError):
                os.chmod(parent, 0o700)
        shutil.rmtree(path, ignore_errors=True)
    if path.exists():
        log.warning("run_workdir_not_removed", path=str(path))
