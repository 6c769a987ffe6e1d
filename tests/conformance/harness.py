"""One face for every server the conformance suite runs against: ours and real Prefect ones.

A scenario says what it does in these terms (a queue, a deployment, a run, its state, the flow's
process, a cancel, the agent's presence) and the same words work on our embedded server and on
a Prefect 3 or 2 server. Everything goes over HTTP to real server processes, and agents are the
real ``agent`` console script.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.support import AGENT, free_port, stop, unavailable, wait_for

REPO = Path(__file__).resolve().parents[2]
FLOWS = Path(__file__).parent / "flows"
STUB_ENGINE = Path(__file__).parent / "stub_engine"
TERMINAL = frozenset({"COMPLETED", "FAILED", "CRASHED", "CANCELLED"})


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without any agent or Prefect settings leaking in."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AGENT_", "PREFECT_")) and k != "PYTHONPATH"
    }
    return env | {"PYTHONUNBUFFERED": "1"} | extra


@dataclass
class Queue:
    id: str
    name: str
    pool: str | None = None


@dataclass
class Harness:
    """What a scenario needs from a server, whichever kind it is."""

    kind: str  # "native", "prefect3", "prefect2"
    url: str  # ends in /api
    home: Path  # scratch space of this server's tests
    auth: httpx.Auth | None = None
    headers: dict[str, str] = field(default_factory=dict)
    api_key: str | None = None  # our server's, when it was started with one

    # ---------------------------------------------------------------- HTTP

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One API call; Prefect on SQLite answers 503 under lock contention now and then."""
        for _ in range(50):
            try:
                response = httpx.request(
                    method,
                    f"{self.url}/{path}",
                    auth=self.auth,
                    headers=self.headers,
                    timeout=30,
                    **kwargs,
                )
            except httpx.TransportError:
                time.sleep(0.2)
                continue
            if response.status_code not in (429, 502, 503):
                return response
            time.sleep(0.2)
        raise AssertionError(f"{method} {path} kept failing")

    def ok(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        assert response.status_code < 300, (
            f"{method} {path}: {response.status_code} {response.text}"
        )
        return response.json() if response.content else None

    # ---------------------------------------------------------------- agents

    def agent_env(self, home: Path, **extra: str) -> dict[str, str]:
        env = clean_env(
            AGENT_HOME=str(home),
            AGENT_API_URL=self.url,
            AGENT_LOG_FORMAT="json",
            AGENT_LOG_LEVEL="debug",
        )
        if self.api_key:
            env["AGENT_API_KEY"] = self.api_key
        return env | extra

    def agent_args(self) -> list[str]:
        return []

    # ---------------------------------------------------------------- what scenarios use

    def queue(self, *, name: str | None = None, pool: str | None = None) -> Queue:
        raise NotImplementedError

    def deployment(self, queue: Queue, entrypoint: str, **parameters: Any) -> str:
        raise NotImplementedError

    def run(self, deployment: str, *, tags: tuple[str, ...] = (), **parameters: Any) -> str:
        raise NotImplementedError

    def state(self, run_id: str) -> dict[str, Any]:
        raise NotImplementedError

    def history(self, run_id: str) -> list[str]:
        raise NotImplementedError

    def result(self, run_id: str) -> Any:
        raise NotImplementedError

    def flow_pid(self, run_id: str) -> int | None:
        raise NotImplementedError

    def cancel(self, run_id: str) -> None:
        raise NotImplementedError

    def agent_online(self, queue: Queue, name: str) -> bool:
        raise NotImplementedError

    def claims(self, run_id: str) -> int:
        """How many times the run was moved to PENDING (claimed)."""
        return self.history(run_id).count("PENDING")

    def wait_state(
        self, run_id: str, states: frozenset[str] | set[str] = TERMINAL, timeout: float = 30
    ) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            state = self.state(run_id)
            return state if state["type"] in states else None

        return wait_for(
            reached, timeout=timeout, interval=0.1, what=f"run {run_id} to be in {sorted(states)}"
        )


class NativeHarness(Harness):
    """Our embedded server (`agent server start`)."""

    def queue(self, *, name: str | None = None, pool: str | None = None) -> Queue:
        body = self.ok("POST", "work_queues", json={"name": name or unique("q")})
        return Queue(id=body["id"], name=body["name"])

    def deployment(self, queue: Queue, entrypoint: str, **parameters: Any) -> str:
        body = {
            "name": unique("d"),
            "work_queue_id": queue.id,
            "entrypoint": entrypoint,
            "working_dir": str(FLOWS),
            "parameters": parameters,
        }
        return str(self.ok("POST", "deployments", json=body)["id"])

    def run(self, deployment: str, *, tags: tuple[str, ...] = (), **parameters: Any) -> str:
        body = {"parameters": parameters, "tags": list(tags)}
        return str(self.ok("POST", f"deployments/{deployment}/runs", json=body)["id"])

    def _run(self, run_id: str) -> dict[str, Any]:
        return dict(self.ok("GET", f"flow_runs/{run_id}"))

    def state(self, run_id: str) -> dict[str, Any]:
        return dict(self._run(run_id)["state"])

    def history(self, run_id: str) -> list[str]:
        return [s["type"] for s in self.ok("GET", f"flow_runs/{run_id}/states")]

    def result(self, run_id: str) -> Any:
        return self._run(run_id)["runner_info"].get("result")

    def flow_pid(self, run_id: str) -> int | None:
        pid = self._run(run_id)["runner_info"].get("pid")
        return int(pid) if pid else None

    def cancel(self, run_id: str) -> None:
        subprocess.run(
            [AGENT, "flow-run", "cancel", run_id],
            env=self.agent_env(self.home / "cli-home"),
            check=True,
            capture_output=True,
            timeout=60,
        )

    def agent_online(self, queue: Queue, name: str) -> bool:
        return any(a["name"] == name and a["status"] == "ONLINE" for a in self.ok("GET", "agents"))


@dataclass
class ReplicasHarness(NativeHarness):
    """Our server as two replicas on one PostgreSQL: the scenario's own requests go to each
    replica in turn (what one wrote, the other reads), and agents are given both URLs."""

    urls: list[str] = field(default_factory=list)
    _turn: int = 0

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        self._turn += 1
        self.url = self.urls[self._turn % len(self.urls)]
        return super().request(method, path, **kwargs)

    def agent_env(self, home: Path, **extra: str) -> dict[str, str]:
        return super().agent_env(home, **extra) | {"AGENT_API_URL": ",".join(self.urls)}


@dataclass
class PrefectHarness(Harness):
    """A real Prefect server (`prefect server start`) and the venv it came from."""

    venv: Path = Path()
    auth_string: str | None = None
    storage: Path = Path()  # where the flows persist their results

    @property
    def python(self) -> str:
        return str(self.venv / "bin" / "python")

    def prefect_env(self) -> dict[str, str]:
        env = {"PREFECT_API_URL": self.url, "PREFECT_HOME": str(self.home / "prefect-home")}
        if self.auth_string:
            env["PREFECT_API_AUTH_STRING"] = self.auth_string
        return env

    def agent_env(self, home: Path, **extra: str) -> dict[str, str]:
        env = super().agent_env(home, **extra)
        if self.auth_string:
            env["AGENT_API_AUTH_STRING"] = self.auth_string
        # The flows' engine inherits these: results persisted as JSON where the test reads them.
        return (
            env
            | {
                "PREFECT_HOME": str(self.home / "prefect-home"),
                "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
                "PREFECT_RESULTS_DEFAULT_SERIALIZER": "json",
                "PREFECT_LOCAL_STORAGE_PATH": str(self.storage),
            }
            | extra
        )

    def agent_args(self) -> list[str]:
        return ["--runner-option", f"python={self.python}"]

    def queue(self, *, name: str | None = None, pool: str | None = None) -> Queue:
        pool = pool or unique("pool")
        response = self.request("POST", "work_pools/", json={"name": pool, "type": "process"})
        assert response.status_code in (201, 409), response.text
        body = self.ok("POST", f"work_pools/{pool}/queues", json={"name": name or unique("q")})
        return Queue(id=body["id"], name=body["name"], pool=pool)

    def deployment(self, queue: Queue, entrypoint: str, **parameters: Any) -> str:
        flow = self.ok("POST", "flows/", json={"name": entrypoint.rpartition(":")[2]})
        body = {
            "name": unique("d"),
            "flow_id": flow["id"],
            "work_pool_name": queue.pool,
            "work_queue_name": queue.name,
            "entrypoint": entrypoint,
            "parameters": parameters,
            "pull_steps": [
                {"prefect.deployments.steps.set_working_directory": {"directory": str(FLOWS)}}
            ],
        }
        return str(self.ok("POST", "deployments/", json=body)["id"])

    def run(self, deployment: str, *, tags: tuple[str, ...] = (), **parameters: Any) -> str:
        body = {"parameters": parameters, "tags": list(tags)}
        return str(self.ok("POST", f"deployments/{deployment}/create_flow_run", json=body)["id"])

    def _run(self, run_id: str) -> dict[str, Any]:
        return dict(self.ok("GET", f"flow_runs/{run_id}"))

    def state(self, run_id: str) -> dict[str, Any]:
        return dict(self._run(run_id)["state"])

    def history(self, run_id: str) -> list[str]:
        states = self.ok("GET", "flow_run_states/", params={"flow_run_id": run_id})
        return [s["type"] for s in sorted(states, key=lambda s: s["timestamp"])]

    def result(self, run_id: str) -> Any:
        """Read the persisted result the state points at (3.x: the value; 2.x: a wrapper)."""
        data = self.state(run_id)["data"]
        key = Path(data["storage_key"])
        document = json.loads((key if key.is_absolute() else self.storage / key).read_text())
        if isinstance(document, dict) and "serializer" in document and "data" in document:
            return json.loads(document["data"])
        return document

    def flow_pid(self, run_id: str) -> int | None:
        value = self._run(run_id).get("infrastructure_pid")
        return int(value.rpartition(":")[2]) if value else None

    def cancel(self, run_id: str) -> None:
        result = subprocess.run(
            [str(self.venv / "bin" / "prefect"), "flow-run", "cancel", run_id],
            env=clean_env(**self.prefect_env()),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, f"prefect flow-run cancel: {result.stdout}{result.stderr}"

    def logs(self, run_id: str) -> list[dict[str, Any]]:
        """The run's log lines in Prefect, oldest first."""
        body = {"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200, "sort": "TIMESTAMP_ASC"}
        return list(self.ok("POST", "logs/filter", json=body))

    def agent_online(self, queue: Queue, name: str) -> bool:
        workers = self.ok("POST", f"work_pools/{queue.pool}/workers/filter", json={})
        return any(w["name"] == name and w["status"] == "ONLINE" for w in workers)


# -------------------------------------------------------------------- server processes


def venv_or_skip(name: str, setup: str) -> Path:
    """The Prefect venv at the repo root; missing: a failure in CI, a skip elsewhere."""
    venv = REPO / name
    if (venv / "bin" / "prefect").exists():
        return venv
    unavailable(f"{name} is missing: run `bash scripts/prefect-setup.sh{setup}`")


@contextlib.contextmanager
def prefect_server(
    venv: Path, home: Path, *, auth_string: str | None = None
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`prefect server start` on a free loopback port, with its own PREFECT_HOME."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = clean_env(
        PREFECT_HOME=str(home / "prefect-server-home"),
        PREFECT_UI_ENABLED="false",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_LOGGING_LEVEL="WARNING",
    )
    if auth_string:
        env["PREFECT_SERVER_API_AUTH_STRING"] = auth_string
    log_path = home / "prefect-server.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [
                str(venv / "bin" / "prefect"),
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}/api"

    def healthy() -> bool:
        if process.poll() is not None:
            raise AssertionError(
                f"prefect server exited {process.returncode}: {log_path.read_text()}"
            )
        try:
            return httpx.get(f"{url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(healthy, timeout=90, interval=0.25, what=f"prefect server at {url}")
        yield url, process
    finally:
        # Its own session: stop the whole group (uvicorn, services).
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


# -------------------------------------------------------------------- agents


class Agents:
    """Starts real agents; at the end every one still running is stopped and must exit 0."""

    def __init__(self, harness: Harness, home: Path) -> None:
        self.harness = harness
        self.home = home
        self.started: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(
        self,
        queue: Queue,
        *args: str,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        engine_args: bool = True,
        cwd: Path | None = None,
    ) -> tuple[subprocess.Popen[bytes], str]:
        return self.launch([queue.id], *args, name=name, env=env, engine_args=engine_args, cwd=cwd)

    def start_pool(
        self, pool: str, *args: str, name: str | None = None, cwd: Path | None = None
    ) -> tuple[subprocess.Popen[bytes], str]:
        """``agent start --pool POOL ARGS…`` (a Prefect work pool, as Prefect's worker)."""
        return self.launch(["--pool", pool], *args, name=name, cwd=cwd)

    def launch(
        self,
        target: list[str],
        *args: str,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        engine_args: bool = True,
        cwd: Path | None = None,
    ) -> tuple[subprocess.Popen[bytes], str]:
        name = name or unique("agent")
        log_path = self.home / f"{name}.log"
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [
                    AGENT,
                    "start",
                    *target,
                    "--name",
                    name,
                    *(self.harness.agent_args() if engine_args else []),
                    *args,
                ],
                env=self.harness.agent_env(self.home / "agent-home") | dict(env or {}),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
            )
        self.started.append((process, log_path))
        return process, name

    def workdirs(self, name: str) -> Path:
        """Where the agent ``name`` makes its Prefect runs' working directories."""
        return self.home / "agent-home" / "agents" / name / "workdirs"

    def logs(self) -> list[str]:
        return [path.read_text(errors="replace") for _, path in self.started]

    def log(self, process: subprocess.Popen[bytes]) -> str:
        for started, path in self.started:
            if started is process:
                return path.read_text(errors="replace")
        return ""

    def stop_all(self) -> None:
        """SIGTERM the agents still running; each must then exit 0 (a test that ended an agent
        itself has checked its exit already)."""
        failures = []
        for process, path in self.started:
            if process.poll() is not None:
                continue
            code = stop(process, timeout=60)
            if code != 0:
                failures.append(f"agent exited {code}:\n{path.read_text(errors='replace')[-3000:]}")
        assert not failures, "\n\n".join(failures)


def pid_gone(pid: int) -> bool:
    """No such process (a zombie counts as gone: it runs nothing)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True
