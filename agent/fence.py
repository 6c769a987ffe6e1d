"""Fencing: a run never outlives its agent's lease, so it never runs in two places at once.

The server resolves an agent's runs (CRASHED, then maybe a retry elsewhere) once ``lease``
seconds pass without a heartbeat. Before that can happen, the old execution must be dead:

* While the agent lives but cannot reach the server, its lease guard stops its runs after half
  the lease (``agent/daemon.py``).
* When the agent itself dies (SIGKILL, OOM), its flows would go on. So each agent has one small
  fence process (``python -m agent.fence DIR``), in its own session so it outlives the agent.
  The agent touches ``DIR/lease`` after every heartbeat the server accepted and lists its runs'
  processes under ``DIR/runs/``. When the lease file is older than half the lease, the fence
  kills every listed run's process tree. One fence per agent, not per run: it costs the same for
  one run as for a thousand.

The same list lets a restarted agent adopt its runs: each entry also keeps what the agent needs
to supervise the run again (the claimed run, the runner's handle info), so an agent back within
the lease takes its runs over instead of losing them (``agent/adoption.py``).

The fence exits by itself once its agent is gone and no run is left to watch.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from uuid import UUID

import psutil

from runners.process_tree import signal_tree

CHECK_SECONDS = 1.0


class FenceDir:
    """The files an agent shares with its fence process: ``$AGENT_HOME/agents/<name>/``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.runs = directory / "runs"
        self.lease = directory / "lease"
        self.agent_pid = directory / "agent.pid"
        self.fence_pid = directory / "fence.pid"
        self.settings = directory / "fence.json"

    @classmethod
    def for_agent(cls, home: Path, name: str) -> FenceDir:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        return cls(home / "agents" / safe)

    def prepare(self, fence_after: float) -> None:
        self.runs.mkdir(parents=True, exist_ok=True)
        self.settings.write_text(json.dumps({"fence_after": fence_after}))
        self.agent_pid.write_text(str(os.getpid()))
        self.touch_lease()

    def touch_lease(self) -> None:
        self.lease.touch()

    def lease_age(self) -> float:
        try:
            return time.time() - self.lease.stat().st_mtime
        except FileNotFoundError:
            return float("inf")

    def fence_after(self) -> float:
        try:
            return float(json.loads(self.settings.read_text())["fence_after"])
        except (OSError, ValueError, KeyError):
            return 15.0

    def register(
        self, run_id: UUID, info: dict[str, Any], adoption: dict[str, Any] | None = None
    ) -> None:
        """List a run's process (or container) so the fence can kill it.

        ``adoption`` is what a restarted agent needs to supervise the run again. In-process runs
        are not listed: they die with the agent.
        """
        keys = ("pid", "pgid", "create_time", "container_id", "auto_remove")
        listed: dict[str, Any] = {k: info[k] for k in keys if k in info}
        if "container_id" not in listed and not {"pid", "create_time"} <= listed.keys():
            return
        if adoption is not None:
            listed["adoption"] = adoption
        path = self.runs / f"{run_id}.json"
        tmp = path.with_suffix(".tmp")
        # Private: the claimed run carries the deployment's environment.
        descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(json.dumps(listed))
        tmp.replace(path)

    def unregister(self, run_id: UUID) -> None:
        (self.runs / f"{run_id}.json").unlink(missing_ok=True)

    def any_registered(self) -> bool:
        return any(self.runs.glob("*.json"))

    def lease_renewed_at(self) -> float | None:
        """The Unix time the lease was last renewed, if ever."""
        try:
            return self.lease.stat().st_mtime
        except FileNotFoundError:
            return None

    def registered(self) -> dict[UUID, dict[str, Any]]:
        found: dict[UUID, dict[str, Any]] = {}
        for path in self.runs.glob("*.json"):
            with contextlib.suppress(OSError, ValueError):
                found[UUID(path.stem)] = json.loads(path.read_text())
        return found

    def kill(self, run_id: UUID, info: dict[str, Any]) -> bool:
        """Kill a listed run's whole process tree; False if it was already gone."""
        self.unregister(run_id)
        return kill_process_tree(info)

    # ------------------------------------------------------------------ the fence process

    def ensure_fence(self) -> int:
        """Start the fence process unless one is already watching this directory."""
        pid = _read_pid(self.fence_pid)
        if pid is not None and _is_fence(pid):
            return pid
        process = subprocess.Popen(
            [sys.executable, "-m", "agent.fence", str(self.directory)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=(self.directory / "fence.log").open("ab"),
            start_new_session=True,  # outlives the agent, and a Ctrl-C meant for the agent
            close_fds=True,
        )
        self.fence_pid.write_text(str(process.pid))
        # We never wait for it: let init reap it when it exits after we are gone.
        return process.pid


def kill_process_tree(info: dict[str, Any]) -> bool:
    if "container_id" in info:
        return kill_container(str(info["container_id"]), remove=bool(info.get("auto_remove")))
    try:
        root = psutil.Process(int(info["pid"]))
        if abs(root.create_time() - float(info["create_time"])) > 0.01:
            return False  # the pid now names another process
    except (psutil.Error, KeyError, ValueError):
        return False
    signal_tree(root, int(info.get("pgid", info["pid"])), signal.SIGKILL)
    return True


def kill_container(container_id: str, *, remove: bool = False) -> bool:
    """SIGKILL a Docker run's container; False if it is gone or Docker cannot be reached.

    ``remove``: the run asked for its container to go (auto_remove) and no agent will collect
    it now, so it is removed here, or it would stay on the host for ever.
    """
    try:
        # The `docker` extra: only agents that run Docker flows list containers.
        import docker  # type: ignore[import-untyped]
        from docker.errors import DockerException  # type: ignore[import-untyped]

        client = docker.from_env(timeout=10)
    except Exception:  # no SDK, no daemon: nothing we can do from here
        return False
    try:
        container = client.containers.get(container_id)
        if remove:
            container.remove(force=True)  # kills it first
        else:
            container.kill()
        return True
    except DockerException:
        return False
    finally:
        client.close()


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return None


def _is_fence(pid: int) -> bool:
    with contextlib.suppress(psutil.Error):
        cmdline = psutil.Process(pid).cmdline()
        return "agent.fence" in cmdline
    return False


def _agent_alive(fence: FenceDir) -> bool:
    pid = _read_pid(fence.agent_pid)
    return pid is not None and psutil.pid_exists(pid)


def watch(fence: FenceDir) -> None:
    """The fence process's loop."""

    def log(message: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        print(f"{stamp} fence {fence.directory.name}: {message}", file=sys.stderr, flush=True)

    log(f"watching (fence after {fence.fence_after():g}s without a renewed lease)")
    while True:
        # Listing, not reading: a thousand runs' entries are only parsed when they must die.
        listed = fence.any_registered()
        if not listed and not _agent_alive(fence):
            log("agent gone and no runs left: exiting")
            return
        age = fence.lease_age()
        if listed and age > fence.fence_after():
            for run_id, info in fence.registered().items():
                killed = fence.kill(run_id, info)
                log(
                    f"lease not renewed for {age:.1f}s: run {run_id} {'killed' if killed else 'already gone'}"
                )
        time.sleep(CHECK_SECONDS)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m agent.fence AGENT_DIR", file=sys.stderr)
        return 2
    # The agent's Ctrl-C or SIGTERM must not stop the fence: it has to outlive the agent.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    watch(FenceDir(Path(argv[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
