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

A run is listed before its runner starts it (``register_starting``) and again, with what the
fence needs to kill it, once started (``register``); the supervisor lets its flow begin only
after that (a held start, ``runners/base.py``). So no flow executes that the list does not name.
Files in the page cache are enough: the list must outlive the agent's process, not the host.

A run that ends keeps what its runner left to say how (a result file, the exited container:
``runners/base.py``, RemainsKeeper) until the agent has recorded the outcome in the run's entry,
and that goes only with the entry (``unregister``): an agent killed anywhere between the run's end
and the server hearing of it still learns, in its next life, how the run ended.

When the fence fires it keeps each entry, renamed ``<run>.fenced`` with what it did: a run whose
process had already ended still has its record (and its remains), so a restarted agent reports it
as it ended instead of running it again. Only the runs it killed before they recorded an outcome
lose their remains.

The fence exits by itself once its agent is gone and no run is left to watch.
"""

from __future__ import annotations

import contextlib
import fcntl
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
import structlog

from agent.errors import ConfigError
from agent.models import DEFAULT_LEASE_SECONDS
from runners.base import OrphanKiller, RemainsKeeper, Runner
from runners.errors import RunnerError
from runners.process_tree import kill_tree
from runners.registry import runner_class

log = structlog.get_logger("agent.fence")

CHECK_SECONDS = 1.0
#: Suffixes of a run's entry: listed (the fence watches it), being fenced, fenced.
LISTED, FENCING, FENCED = ".json", ".fencing", ".fenced"


class FenceDir:
    """The files an agent shares with its fence process: ``$AGENT_HOME/agents/<name>/``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.runs = directory / "runs"
        self.lease = directory / "lease"
        self.agent_pid = directory / "agent.pid"
        self.fence_pid = directory / "fence.pid"
        self.settings = directory / "fence.json"
        self.lock_file = directory / "agent.lock"
        self._lock_fd: int | None = None
        self._fence_process: subprocess.Popen[bytes] | None = None

    @classmethod
    def for_agent(cls, home: Path, name: str) -> FenceDir:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        return cls(home / "agents" / safe)

    def lock(self, name: str) -> None:
        """Hold this agent name on this host for as long as the process lives.

        Two live agents under one name would take over each other's runs (their fences, their
        leases and the server's record are the name's): the second one refuses to start.
        """
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        descriptor = os.open(self.lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            holder = _read_pid(self.agent_pid)
            raise ConfigError(
                f"another agent named {name!r} is already running on this host"
                + (f" (pid {holder})" if holder is not None else ""),
                hint="an agent's name is its identity (its runs, its lease, its fence): give "
                "this one a name of its own with --name",
            ) from None
        self._lock_fd = descriptor  # released by the kernel when this process ends

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
            return DEFAULT_LEASE_SECONDS / 2

    def register_starting(self, run_id: UUID, adoption: dict[str, Any]) -> None:
        """List a run about to be started, before anything of it exists.

        Nothing to kill yet: a run started held never begins without its agent (its go pipe
        closes), so an agent that dies before :meth:`register` leaves a record saying the run
        never began, not an unknown process.
        """
        self._write(run_id, {"starting": True, "adoption": adoption})

    def register(
        self,
        run_id: UUID,
        info: dict[str, Any],
        adoption: dict[str, Any] | None = None,
        *,
        runner: Runner,
    ) -> None:
        """List a run's process (or container) so the fence can kill it: the runner that started
        it is asked to (by name, from the fence's process), with ``info`` (the run's handle's).

        ``adoption`` is what a restarted agent needs to supervise the run again. A run of a
        runner that cannot kill from outside the agent (in-process: its runs die with the
        agent) has nothing to kill: its entry only says so.
        """
        listed: dict[str, Any] = {"in_agent": True}
        if isinstance(runner, OrphanKiller | RemainsKeeper):
            # Named even when it cannot kill: its remains are discarded by name.
            public = {k: v for k, v in info.items() if not k.startswith("_")}
            if isinstance(runner, OrphanKiller):
                listed = {}
            listed |= {"runner": runner.name, "info": public}
        if adoption is not None:
            listed["adoption"] = adoption
        self._write(run_id, listed)

    def record_outcome(
        self, run_id: UUID, adoption: dict[str, Any], outcome: dict[str, Any]
    ) -> None:
        """The run has ended and ``outcome`` is the report about to be sent: an agent that dies
        before the server has it reports it in its next life instead of running it again.

        What the runner left of the run (its result file, its exited container: runners/base.py,
        RemainsKeeper) goes only when the entry does (:meth:`unregister`): until this is written
        it is the only record of how the run ended, and the new entry names it so that whoever
        forgets the run removes it."""
        ended: dict[str, Any] = {"ended": True, "outcome": outcome, "adoption": adoption}
        earlier = self._entry(run_id)
        if earlier is not None and "runner" in earlier:
            ended |= {"runner": earlier["runner"], "remains": _remains(earlier)}
        self._write(run_id, ended)

    def _entry(self, run_id: UUID) -> dict[str, Any] | None:
        try:
            entry = json.loads((self.runs / f"{run_id}{LISTED}").read_text())
        except (OSError, ValueError):
            return None
        return entry if isinstance(entry, dict) else None

    def _write(self, run_id: UUID, listed: dict[str, Any]) -> None:
        _write_private(self.runs / f"{run_id}{LISTED}", listed)

    def unregister(self, run_id: UUID) -> None:
        """Forget the run, and what its runner left to say how it ended (discarded first: an
        agent killed in between forgets the run again in its next life, and discards again).
        Blocking (a container's removal asks dockerd): the agent calls it off its event loop."""
        for suffix in (LISTED, FENCING, FENCED):
            path = self.runs / f"{run_id}{suffix}"
            with contextlib.suppress(OSError, ValueError):
                entry = json.loads(path.read_text())
                if isinstance(entry, dict):
                    discard_remains(entry)
            path.unlink(missing_ok=True)

    def any_registered(self) -> bool:
        return any(self.runs.glob("*.json"))

    def lease_renewed_at(self) -> float | None:
        """The Unix time the lease was last renewed, if ever."""
        try:
            return self.lease.stat().st_mtime
        except FileNotFoundError:
            return None

    def registered(self) -> dict[UUID, dict[str, Any]]:
        """Every run listed, fenced or not (a fenced entry says so under "fenced").

        A damaged entry (truncated by a full disk, a stray file) is moved aside with a warning
        rather than stop the agent, or the fence, from starting.
        """
        found: dict[UUID, dict[str, Any]] = {}
        # Fenced first, so a newer listing of the same run (a restarted agent's) wins.
        for suffix in (FENCED, FENCING, LISTED):
            for path in self.runs.glob(f"*{suffix}"):
                try:
                    entry = json.loads(path.read_text())
                    if not isinstance(entry, dict):
                        raise ValueError("not a JSON object")
                    found[UUID(path.name.removesuffix(suffix))] = entry
                except FileNotFoundError:
                    continue  # unregistered meanwhile
                except (OSError, ValueError) as exc:
                    _move_aside(path, exc)
        return found

    def kill(self, run_id: UUID, entry: dict[str, Any]) -> bool:
        """Kill what a listed run started and forget it; False if it was already gone."""
        killed = kill_listed(entry)
        self.unregister(run_id)
        return killed

    def fence(self, age: float) -> list[tuple[UUID, str]]:
        """Kill every listed run (the lease is gone); keep each entry, marked fenced."""
        done = []
        for path in self.runs.glob(f"*{LISTED}"):
            try:
                run_id = UUID(path.name.removesuffix(LISTED))
            except ValueError:
                _move_aside(path, ValueError("not a run's entry"))
                continue
            fencing = path.with_suffix(FENCING)
            try:
                # Atomic: an agent listing the run again meanwhile writes a new entry, which
                # the next round fences; never one half-read here.
                path.rename(fencing)
                entry = json.loads(fencing.read_text())
            except FileNotFoundError:
                continue  # unregistered meanwhile
            except (OSError, ValueError) as exc:
                _move_aside(fencing, exc)
                continue
            if entry.get("starting"):
                what = "not started yet: it cannot begin without its agent"
            elif entry.get("ended"):
                what = "already ended (its outcome is recorded)"
            elif entry.get("in_agent"):
                what = "ran inside the agent: ended with it"
            elif kill_listed(entry):
                what = "killed"
                # Killed before it could record how it ended: nothing of it to report.
                discard_remains(entry, keep_outcome=True)
            else:
                what = "already ended"  # its remains say how: kept for its agent
            entry["fenced"] = {"at": time.time(), "lease_age": age, "what": what}
            _write_private(fencing.with_suffix(FENCED), entry)
            fencing.unlink(missing_ok=True)
            done.append((run_id, what))
        return done

    # ------------------------------------------------------------------ the fence process

    def ensure_fence(self) -> bool:
        """Start the fence process unless one is watching this directory; True if started."""
        if self._fence_process is not None and self._fence_process.poll() is None:
            return False  # ours, and alive (poll() also reaps it once it has died)
        pid = _read_pid(self.fence_pid)
        if pid is not None and _is_fence(pid, self.directory):
            return False
        with (self.directory / "fence.log").open("ab") as log:  # the child keeps its own copy
            self._fence_process = subprocess.Popen(
                [sys.executable, "-m", "agent.fence", str(self.directory)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,  # outlives the agent, and a Ctrl-C meant for the agent
                close_fds=True,
            )
        self.fence_pid.write_text(str(self._fence_process.pid))
        return True

    def stop_fence(self, timeout: float = 5.0) -> None:
        """At a clean exit that leaves no run listed, the fence has nothing to watch: stop the
        one this agent started now (and reap it) rather than let it find that out later."""
        process = self._fence_process
        if process is None or process.poll() is not None or self.any_registered():
            return
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout)

    def fence_pidfd(self) -> int | None:
        """A pidfd of the running fence, readable the instant it ends; None when none runs
        (or the kernel has no pidfds). The caller closes it."""
        pid = _read_pid(self.fence_pid)
        if pid is None or not hasattr(os, "pidfd_open"):
            return None
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            return None
        # Checked after opening: the fd now pins this very process, whatever reuses the pid.
        if not _is_fence(pid, self.directory):
            os.close(fd)
            return None
        return fd

    def fence_running(self) -> bool:
        pid = _read_pid(self.fence_pid)
        return pid is not None and _is_fence(pid, self.directory)


def kill_listed(entry: dict[str, Any]) -> bool:
    """Kill what a listed run started, asking the runner that started it (runners/base.py,
    OrphanKiller); False if it was gone already.

    Entries written before they named their runner: a container is Docker's, a pid a process
    tree's. A runner that cannot be loaded here still has its process tree killed, if it listed
    one: the fence must not fail to kill for want of a plug-in.
    """
    info = entry.get("info", entry)  # flat: an entry an earlier version wrote
    cls = _runner_of(entry, info)
    if cls is not None and issubclass(cls, OrphanKiller):
        return cls.kill_orphan(info)
    return "pid" in info and kill_tree(info)


def discard_remains(entry: dict[str, Any], *, keep_outcome: bool = False) -> None:
    """Have the runner that started a listed run remove what it left to say how the run ended
    (runners/base.py, RemainsKeeper)."""
    info = _remains(entry)
    cls = _runner_of(entry, info)
    if cls is not None and issubclass(cls, RemainsKeeper):
        cls.discard_remains(info, keep_outcome=keep_outcome)


def _remains(entry: dict[str, Any]) -> dict[str, Any]:
    """The handle's whole info (its private keys too: the subprocess runner's result file)."""
    if isinstance(entry.get("remains"), dict):
        return dict(entry["remains"])
    info = (entry.get("adoption") or {}).get("info") or entry.get("info") or {}
    return dict(info) if isinstance(info, dict) else {}


def _runner_of(entry: dict[str, Any], info: dict[str, Any]) -> type | None:
    name = entry.get("runner") or ("docker" if "container_id" in info else "subprocess")
    if "runner" not in entry and "pid" not in info and "container_id" not in info:
        return None  # in the agent, or not started: nothing of a runner's to ask about
    try:
        return runner_class(str(name))
    except RunnerError:
        return None


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return None


def _is_fence(pid: int, directory: Path) -> bool:
    with contextlib.suppress(psutil.Error):
        process = psutil.Process(pid)
        cmdline = process.cmdline()
        return (
            process.status() != psutil.STATUS_ZOMBIE
            and "agent.fence" in cmdline
            and cmdline[-1] == str(directory)
        )
    return False


def _write_private(path: Path, document: dict[str, Any]) -> None:
    """Write ``document`` whole or not at all; private: a claimed run carries the deployment's
    environment. The temporary name is the writer's own (the agent and its fence both write)."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(json.dumps(document))
    tmp.replace(path)


def _move_aside(path: Path, why: Exception) -> None:
    aside = path.with_name(path.name + ".damaged")
    with contextlib.suppress(OSError):
        path.replace(aside)
    log.warning(
        "fence_entry_damaged",
        path=str(path),
        moved_to=str(aside),
        error=str(why),
        hint="inspect and delete it; the run it named, if any, is resolved by the server",
    )


def _agent_alive(fence: FenceDir) -> bool:
    pid = _read_pid(fence.agent_pid)
    return pid is not None and psutil.pid_exists(pid)


def watch(fence: FenceDir) -> None:
    """The fence process's loop."""

    def log(message: str) -> None:  # the fence's own log file: plain lines
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
            for run_id, what in fence.fence(age):
                log(f"lease not renewed for {age:.1f}s: run {run_id} {what}")
        time.sleep(CHECK_SECONDS)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m agent.fence AGENT_DIR", file=sys.stderr)
        return 2
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))  # fence.log
    # The agent's Ctrl-C or SIGTERM must not stop the fence: it has to outlive the agent.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    watch(FenceDir(Path(argv[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
