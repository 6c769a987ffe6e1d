"""The processes a benchmark needs, started for real and always stopped again.

A :class:`Lab` owns a scratch directory and every process started through it: our server
(``agent server start``), agents (``agent start``), a Prefect server and Prefect's own worker.
Each gets its own home directory and log file under the lab's directory; on exit whatever is
still running is stopped by its own pid (or its own process group, for the ones started in a
session of their own).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
AGENT = str(BIN / "agent")
FLOWS = Path(__file__).resolve().parent / "flows"
PREFECT_VENV = REPO / ".prefect-venv"
T = TypeVar("T")


class LabError(Exception):
    """A benchmark could not set up what it measures."""


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any agent or Prefect settings leaking in."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AGENT_", "PREFECT_")) and k != "PYTHONPATH"
    }
    return env | {"PYTHONUNBUFFERED": "1"} | extra


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(
    predicate: Callable[[], T | bool | None],
    timeout: float,
    what: str,
    interval: float = 0.05,
) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise LabError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    own_group: bool = False

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (to its group when it leads one), then SIGKILL after ``timeout``."""
        if self.popen.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.popen.wait()
        elif self.own_group:
            # The leader is gone; what it started in its group may not be.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, signal.SIGKILL)
        return self.popen.returncode

    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            if self.own_group:
                os.killpg(self.popen.pid, sig)
            else:
                self.popen.send_signal(sig)


class Lab:
    """A scratch directory plus the processes started in it; a context manager."""

    def __init__(
        self, root: Path | None = None, keep: bool = False, profile: Path | None = None
    ) -> None:
        self.keep = keep or root is not None
        self.root = root or Path(tempfile.mkdtemp(prefix="flowagent-bench-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.procs: list[Proc] = []
        self._counter = 0
        # With a directory, py-spy records a flame graph of every server and agent we start.
        self.profile = profile
        self._spies: list[subprocess.Popen[bytes]] = []
        if profile is not None:
            if shutil.which("py-spy", path=str(BIN)) is None:
                raise LabError(f"--py-spy needs py-spy in {BIN}: {BIN}/pip install py-spy")
            profile.mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)

    def path(self, name: str) -> Path:
        """A fresh directory under the lab's root."""
        self._counter += 1
        path = self.root / f"{self._counter:03d}-{name}"
        path.mkdir(parents=True)
        return path

    def start(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        *,
        cwd: Path | None = None,
        own_group: bool = False,
    ) -> Proc:
        log_path = self.root / f"{name}.log"
        with log_path.open("ab") as log:
            popen = subprocess.Popen(
                list(argv),
                env=dict(env),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=own_group,
            )
        proc = Proc(name, popen, log_path, own_group)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc, timeout: float = 30.0) -> int:
        code = proc.stop(timeout)
        with contextlib.suppress(ValueError):
            self.procs.remove(proc)
        return code

    def stop_after(self, proc: Proc) -> None:
        """Stop what was started after ``proc`` (its agents), newest first, then ``proc``: an
        agent stopped after its server would spend its drain retrying the server."""
        if proc in self.procs:
            for later in reversed(self.procs[self.procs.index(proc) + 1 :]):
                self.stop(later)
        self.stop(proc)

    def stop_all(self) -> None:
        # Agents before servers, so that they can report what they hold.
        for proc in reversed(list(self.procs)):
            self.stop(proc)
        # py-spy writes its flame graph once the process it records has exited.
        for spy in self._spies:
            try:
                spy.wait(60)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait()
        self._spies.clear()

    def _spy(self, proc: Proc) -> None:
        if self.profile is None:
            return
        out = self.profile / f"{proc.name}-{proc.pid}.svg"
        argv = [str(BIN / "py-spy"), "record", "--pid", str(proc.pid), "--output", str(out)]
        with (self.root / f"py-spy-{proc.name}.log").open("ab") as log:
            self._spies.append(
                subprocess.Popen(
                    [*argv, "--rate", "250", "--nonblocking"],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )

    # ------------------------------------------------------------------ our server, our agent

    @contextlib.contextmanager
    def native_server(
        self, name: str = "server", env: Mapping[str, str] | None = None
    ) -> Iterator[NativeServer]:
        """Our server; ``env`` adds settings (``AGENT_DATABASE_URL``: a PostgreSQL replica)."""
        home = self.path(name)
        port = free_port()
        proc = self.start(
            name,
            [AGENT, "server", "start", "--port", str(port)],
            clean_env(AGENT_HOME=str(home), AGENT_LOG_FORMAT="json") | dict(env or {}),
        )
        server = NativeServer(f"http://127.0.0.1:{port}/api", home, proc)
        self._spy(proc)
        try:
            wait_for(lambda: _healthy(server.url, proc), 30, f"{name} at {server.url}")
            yield server
        finally:
            self.stop_after(proc)

    def agent(
        self,
        api_url: str,
        queue_id: str,
        *args: str,
        name: str,
        env: Mapping[str, str] | None = None,
        ready: bool = True,
    ) -> Proc:
        """``agent start QUEUE --name NAME ARGS…`` with its own AGENT_HOME."""
        home = self.path(name)
        proc = self.start(
            name,
            [AGENT, "start", queue_id, "--name", name, *args],
            clean_env(AGENT_HOME=str(home), AGENT_API_URL=api_url, AGENT_LOG_FORMAT="json")
            | dict(env or {}),
        )
        self._spy(proc)
        if ready:
            wait_for(lambda: _logged(proc, '"agent_started"'), 60, f"agent {name} to start", 0.02)
            # agent_started comes just before the claim loop's first request.
            time.sleep(0.3)
        return proc

    # ------------------------------------------------------------------ Prefect

    @contextlib.contextmanager
    def prefect_server(self, venv: Path) -> Iterator[PrefectServer]:
        home = self.path("prefect-server")
        port = free_port()
        proc = self.start(
            "prefect-server",
            [
                str(venv / "bin" / "prefect"),
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            clean_env(
                PREFECT_HOME=str(home),
                PREFECT_UI_ENABLED="false",
                PREFECT_SERVER_ANALYTICS_ENABLED="false",
                PREFECT_SERVER_LOGGING_LEVEL="WARNING",
            ),
            own_group=True,  # uvicorn and its services
        )
        server = PrefectServer(f"http://127.0.0.1:{port}/api", home, proc, venv)
        try:
            wait_for(
                lambda: _healthy(server.url, proc), 120, f"prefect server at {server.url}", 0.25
            )
            yield server
        finally:
            self.stop_after(proc)


@dataclass
class NativeServer:
    url: str
    home: Path
    proc: Proc


@dataclass
class PrefectServer:
    url: str
    home: Path
    proc: Proc
    venv: Path

    @property
    def python(self) -> str:
        return str(self.venv / "bin" / "python")

    @property
    def prefect(self) -> str:
        return str(self.venv / "bin" / "prefect")


def _healthy(url: str, proc: Proc) -> bool:
    if not proc.alive():
        raise LabError(f"{proc.name} exited {proc.popen.returncode}:\n{proc.log_text()[-3000:]}")
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _logged(proc: Proc, needle: str) -> bool:
    if not proc.alive():
        raise LabError(f"{proc.name} exited {proc.popen.returncode}:\n{proc.log_text()[-3000:]}")
    return needle in proc.log_text()
