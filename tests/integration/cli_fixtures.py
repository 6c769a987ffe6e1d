"""A real embedded server and the real `agent` console script, for the CLI's integration tests."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests import support
from tests.support import AGENT, stop


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_")}
    return env | {"AGENT_HOME": str(home), "PYTHONUNBUFFERED": "1"} | extra


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
    """The real server on a free loopback port (tests/support.py), and a Cli pointed at it."""
    with support.running_server(home, api_key=api_key) as server:
        cli = Cli(home=home, api_url=server.url, env=clean_env(home, AGENT_API_URL=server.url))
        try:
            yield cli
        finally:
            for agent in cli.processes:
                stop(agent)
