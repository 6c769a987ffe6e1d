"""Helpers for tests that drive real processes: a real server, real agents, the real CLI."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import httpx
import pytest

BIN = Path(sys.executable).parent
FLOWS = Path(__file__).parent / "integration" / "flows"
BLOCK_LOOP_HOOK = Path(__file__).parent / "fixtures" / "block_loop"


def block_loop_on_sigusr1(seconds: float) -> dict[str, str]:
    """Env for an agent whose event loop SIGUSR1 blocks for ``seconds`` (a test-only hook:
    tests/fixtures/block_loop/sitecustomize.py)."""
    path = os.pathsep.join(p for p in (str(BLOCK_LOOP_HOOK), os.environ.get("PYTHONPATH")) if p)
    return {"PYTHONPATH": path, "AGENT_TEST_BLOCK_LOOP_SECONDS": str(seconds)}


TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
AGENT = str(BIN / "agent")
T = TypeVar("T")


def require(problem: str | None) -> None:
    """A component CI installs (dockerd, a Prefect venv, systemd…) is missing when ``problem``
    says why: the test fails when ``CI`` is set, and skips, saying so, elsewhere."""
    if problem is not None:
        unavailable(problem)


def unavailable(problem: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"CI needs it, and {problem}", pytrace=False)
    pytest.skip(problem)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(
    predicate: Callable[[], T | None], timeout: float = 10.0, interval: float = 0.05, what: str = ""
) -> T:
    """Poll until ``predicate`` returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


@dataclass
class Server:
    url: str  # ends in /api
    home: Path
    process: subprocess.Popen[bytes]
    env: dict[str, str]
    api_key: str | None = None
    database_url: str | None = None  # None: SQLite in home

    @property
    def base(self) -> str:
        """Where it listens, without /api: /docs, /openapi.json and /metrics hang off it."""
        return self.url.removesuffix("/api")

    def client(self, api_key: str | None = None, timeout: float = 30) -> Api:
        """A client of its API, with the server's own key unless given another."""
        key = api_key if api_key is not None else self.api_key
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return Api(base_url=self.url + "/", headers=headers, timeout=timeout)

    def log(self) -> str:
        """What it printed (stdout and stderr), every life of it on this home."""
        return (self.home / "server.log").read_text(errors="replace")

    def assert_stopped_cleanly(self) -> None:
        """It went down on SIGTERM by itself (uvicorn re-raises the signal), no traceback."""
        code = self.process.returncode
        assert code in (0, -signal.SIGTERM), f"server exited with {code}:\n{self.log()}"
        assert "Traceback" not in self.log(), self.log()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


class Api(httpx.Client):
    """A client of the server's API with helpers that assert the status, so that tests read
    as steps."""

    def queue(self, **fields: Any) -> dict[str, Any]:
        response = self.post("work_queues", json={"name": unique("q"), **fields})
        assert response.status_code == 201, response.text
        return dict(response.json())

    def deployment(self, queue: dict[str, Any], **fields: Any) -> dict[str, Any]:
        body = {"name": unique("d"), "work_queue_id": queue["id"], "command": ["true"], **fields}
        response = self.post("deployments", json=body)
        assert response.status_code == 201, response.text
        return dict(response.json())

    def run(self, deployment: dict[str, Any], **fields: Any) -> dict[str, Any]:
        response = self.post(f"deployments/{deployment['id']}/runs", json=fields)
        assert response.status_code == 201, response.text
        return dict(response.json())

    def agent(self, queue: dict[str, Any], **fields: Any) -> dict[str, Any]:
        body = {"name": unique("agent"), "work_queue_id": queue["id"], **fields}
        response = self.post("agents/heartbeat", json=body)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def get_run(self, run_id: str) -> dict[str, Any]:
        response = self.get(f"flow_runs/{run_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def claim(self, queue: dict[str, Any], agent: dict[str, Any], **fields: Any) -> list[Any]:
        body = {"agent_id": agent["id"], **fields}
        response = self.post(f"work_queues/{queue['id']}/claim", json=body)
        assert response.status_code == 200, response.text
        return list(response.json())

    def set_state(self, run_id: str, state: str, **fields: Any) -> httpx.Response:
        return self.post(f"flow_runs/{run_id}/set_state", json={"type": state, **fields})

    def move(self, run_id: str, *states: str) -> dict[str, Any]:
        """Walk a run through ``states``, each of which must be accepted."""
        run: dict[str, Any] = {}
        for state in states:
            response = self.set_state(run_id, state)
            assert response.status_code == 200, response.text
            run = dict(response.json())
        return run


def base_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_")}
    env |= {"AGENT_HOME": str(home), "AGENT_LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1"}
    return env | dict(extra or {})


@contextlib.contextmanager
def running_server(
    home: Path,
    extra_env: Mapping[str, str] | None = None,
    port: int | None = None,
    *,
    api_key: str | None = None,
    database_url: str | None = None,
) -> Iterator[Server]:
    """The real embedded server on a (free) loopback port, as a separate process; its output
    goes to ``home/server.log``. On SQLite in ``home``, or on ``database_url``."""
    port = port or free_port()
    env = base_env(home, extra_env)
    if api_key is not None:
        env["AGENT_API_KEY"] = api_key
    if database_url is not None:
        env["AGENT_DATABASE_URL"] = database_url
    database_url = env.get("AGENT_DATABASE_URL")
    log_path = home / "server.log"
    home.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [AGENT, "server", "start", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/api"
    env["AGENT_API_URL"] = url

    def healthy() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"server exited {process.returncode}: {log_path.read_text()}")
        try:
            return httpx.get(f"{url}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        # Generous: on a loaded 2-core CI machine one start stalled over 20 s before its first
        # log line (the log was empty, no database made), then said nothing of why.
        try:
            wait_for(healthy, timeout=60, what="the server's /api/health")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; its log: {log_path.read_text()[-3000:]!r}") from None
        yield Server(
            url=url,
            home=home,
            process=process,
            env=env,
            api_key=api_key,
            database_url=database_url,
        )
    finally:
        stop(process)


#: What a module's tests run on with ``each_database``: every test once on each.
DATABASES = ["sqlite", "postgres"]


def server_fixture(
    label: str, extra_env: Mapping[str, str] | None = None, *, each_database: bool = False
) -> Any:
    """A module's own server (its own home and settings), for the module's tests:
    ``server = server_fixture("e2e")``. The ``api`` fixture then talks to it.

    ``each_database``: the module runs twice, on SQLite and on a PostgreSQL database of the
    session's cluster (``postgres_cluster``, which fails in CI when PostgreSQL is missing).
    """

    @pytest.fixture(scope="module", name="server", params=DATABASES if each_database else None)
    def fixture(
        tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
    ) -> Iterator[Server]:
        database_url = None
        if getattr(request, "param", "sqlite") == "postgres":
            database_url = request.getfixturevalue("postgres_cluster").new_database()
        home = tmp_path_factory.mktemp(label)
        with running_server(home, extra_env, database_url=database_url) as srv:
            yield srv

    return fixture


def shared_server_on_each_database() -> Any:
    """For a module of tests on the session's shared server: run each of them on it and again
    on its PostgreSQL twin (``postgres_server``): ``server = shared_server_on_each_database()``.
    """

    @pytest.fixture(scope="module", name="server", params=DATABASES)
    def fixture(request: pytest.FixtureRequest, server: Server) -> Server:
        # ``server`` here is the session's (the fixture this one overrides).
        if request.param == "sqlite":
            return server
        twin: Server = request.getfixturevalue("postgres_server")
        return twin

    return fixture


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 15) -> int:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def cli(
    server: Server, *args: str, check: bool = True, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real `agent` command against ``server``."""
    result = subprocess.run(
        [AGENT, *args],
        env=server.env | dict(env or {}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"agent {' '.join(args)} exited {result.returncode}\n"
            f"stdout: {result.stdout}\nstderr: {result.stderr}"
        )
    return result


def start_agent(
    server: Server, queue_id: str, *args: str, log_path: Path | None = None, **env: str
) -> subprocess.Popen[bytes]:
    log_path = log_path or server.home / f"agent-{time.monotonic_ns()}.log"
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [AGENT, "start", queue_id, *args],
            env=server.env | env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


class ActiveSampler:
    """Reads the runs holding slots (PENDING, RUNNING, CANCELLING) from the API every 50 ms
    while in its ``with`` block; each read is one consistent snapshot of the database. Reads
    that fail (a server being restarted) are counted and skipped."""

    def __init__(self, api_url: str, interval: float = 0.05) -> None:
        self.samples: list[list[dict[str, Any]]] = []
        self.failed = 0
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(api_url,), daemon=True)

    def __enter__(self) -> ActiveSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self, api_url: str) -> None:
        active = ["PENDING", "RUNNING", "CANCELLING"]
        with httpx.Client(base_url=api_url + "/", timeout=10) as client:
            while not self._stop.wait(self._interval):
                try:
                    response = client.get("flow_runs", params={"state": active, "limit": 1000})
                    response.raise_for_status()
                except httpx.HTTPError:
                    self.failed += 1
                    continue
                self.samples.append(response.json())

    def most(self, matches: Callable[[dict[str, Any]], bool]) -> int:
        """The most runs ``matches`` accepts in any one sample."""
        return max((sum(1 for run in sample if matches(run)) for sample in self.samples), default=0)


# ------------------------------------------------------------------ API helpers for tests


def make_queue(api: httpx.Client, **fields: Any) -> dict[str, Any]:
    name = f"q-{time.monotonic_ns()}"
    response = api.post("work_queues", json={"name": name, **fields})
    assert response.status_code == 201, response.text
    return dict(response.json())


def make_deployment(api: httpx.Client, queue: dict[str, Any], **fields: Any) -> dict[str, Any]:
    body = {
        "name": f"d-{time.monotonic_ns()}",
        "work_queue_id": queue["id"],
        "working_dir": str(FLOWS),
        **fields,
    }
    response = api.post("deployments", json=body)
    assert response.status_code in (200, 201), response.text
    return dict(response.json())


def make_run(api: httpx.Client, deployment: dict[str, Any], **fields: Any) -> dict[str, Any]:
    response = api.post(f"deployments/{deployment['id']}/runs", json=fields)
    assert response.status_code == 201, response.text
    return dict(response.json())


def get_run(api: httpx.Client, run_id: str) -> dict[str, Any]:
    return dict(api.get(f"flow_runs/{run_id}").json())


def wait_state(
    api: httpx.Client, run_id: str, states: set[str] = TERMINAL, timeout: float = 30
) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        run = get_run(api, run_id)
        return run if run["state"]["type"] in states else None

    return wait_for(reached, timeout=timeout, what=f"run {run_id} to reach {sorted(states)}")


def log_lines(api: httpx.Client, run_id: str) -> list[str]:
    return [line["line"] for line in api.get(f"flow_runs/{run_id}/logs").json()]
