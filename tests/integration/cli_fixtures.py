"""A real embedded server and the real `agent` console script, for the CLI's integration tests."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

AGENT = str(Path(sys.executable).parent / "agent")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_")}
    return env | {"AGENT_HOME": str(home), "PYTHONUNBUFFERED": "1"} | extra


def stop(process: subprocess.Popen[bytes], timeout: float = 15) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


@dataclass
class Cli:
    """Runs `agent …` against one server, the way a user's shell would."""

    home: Path
    api_url: str
    env: dict[str, str] = field(default_factory=dict)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __call__(
        self, *args: str, ok: bool = True, timeout: float = 60, **env: str
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [AGENT, *args],
            env=self.env | env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.home,
        )
        if ok and result.returncode != 0:
            raise AssertionError(
                f"agent {' '.join(args)} exited {result.returncode}\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}"
            )
        assert "Traceback" not in result.stderr, result.stderr
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self(*args).stdout)

    def start_agent(self, queue_id: str, *args: str) -> subprocess.Popen[bytes]:
        log = (self.home / f"agent-{time.monotonic_ns()}.log").open("wb")
        with log:
            process = subprocess.Popen(
                [AGENT, "start", queue_id, *args],
                env=self.env | {"AGENT_LOG_FORMAT": "json"},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.processes.append(process)
        return process


@contextlib.contextmanager
def running_server(home: Path, api_key: str | None = None) -> Iterator[Cli]:
    """`python -m agent.server` on a free loopback port, and a Cli pointed at it."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server_env = clean_env(home, **({"AGENT_API_KEY": api_key} if api_key else {}))
    log_path = home / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "agent.server", "--port", str(port)],
            env=server_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/api"
    cli = Cli(home=home, api_url=url, env=clean_env(home, AGENT_API_URL=url))
    try:
        deadline = time.monotonic() + 20
        while True:
            if process.poll() is not None:
                raise AssertionError(f"server exited {process.returncode}: {log_path.read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise AssertionError(f"server did not answer /api/health: {log_path.read_text()}")
            time.sleep(0.05)
        yield cli
    finally:
        for agent in cli.processes:
            stop(agent)
        stop(process)
