"""systemd: the unit files pass `systemd-analyze verify`, and the agent speaks sd_notify.

The agent runs as a real process against a real server, with ``NOTIFY_SOCKET`` pointing at an
AF_UNIX datagram socket this test binds, as systemd's would be. CI has systemd's tools; a test
that needs them fails when ``CI`` is set and they are missing, and skips only outside CI.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.notify import SystemdNotifier
from tests.support import (
    Server,
    block_loop_on_sigusr1,
    server_fixture,
    start_agent,
    stop,
    unavailable,
    wait_for,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "systemd"
FLOWS = Path(__file__).parent / "flows"
SYSTEM_UNITS = next(
    (p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir()),
    None,
)


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        unavailable(f"{name} is not installed (Debian package: systemd)")
    return path


# --------------------------------------------------------------------------- unit files


def fake_root(tmp_path: Path, *, with_binary: bool = True) -> Path:
    """A root for `systemd-analyze --root`: the distribution's units, ours, and our binary."""
    if SYSTEM_UNITS is None:
        pytest.fail("no /usr/lib/systemd/system to verify against", pytrace=False)
    root = tmp_path / "root"
    shutil.copytree(SYSTEM_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    for unit in UNITS.glob("*.service"):
        shutil.copy(unit, root / "etc/systemd/system" / unit.name)
    if with_binary:
        binary = root / "opt/flowagent/bin/agent"
        binary.parent.mkdir(parents=True)
        binary.write_text("#!/bin/sh\n")
        binary.chmod(0o755)
    return root


def verify(root: Path, *units: str) -> subprocess.CompletedProcess[str]:
    analyze = require_tool("systemd-analyze")
    paths = [str(root / "etc/systemd/system" / unit) for unit in units]
    return subprocess.run(
        [analyze, "verify", "--man=no", f"--root={root}", *paths],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    root = fake_root(tmp_path)

    result = verify(root, "flowagent-server.service", "flowagent-agent@main.service")

    # verify exits 0 on an unknown key or a bad value and only complains: both must be silent.
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
    assert result.stderr.strip() == ""


def test_verify_would_catch_a_mistake(tmp_path: Path) -> None:
    """The check above is not vacuous: a typo, or a missing binary, is reported."""
    root = fake_root(tmp_path, with_binary=False)
    unit = root / "etc/systemd/system/flowagent-agent@.service"
    unit.write_text(unit.read_text().replace("NoNewPrivileges=", "NoNewPrivilges="))

    result = verify(root, "flowagent-agent@main.service")

    assert "NoNewPrivilges" in result.stderr
    assert "/opt/flowagent/bin/agent is not executable" in result.stderr


def test_agent_unit_is_a_hardened_notify_service() -> None:
    text = (UNITS / "flowagent-agent@.service").read_text()
    for line in (
        "Type=notify",
        "NotifyAccess=main",
        "EnvironmentFile=/etc/flowagent/%i.env",
        "Restart=on-failure",
        "KillMode=mixed",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/flowagent",
        "PrivateTmp=yes",
        "User=flowagent",
    ):
        assert f"\n{line}\n" in text, line
    # The stop timeout must leave room for the drain (30s) and the cancel grace (10s).
    stop_timeout = next(
        line.split("=", 1)[1] for line in text.splitlines() if line.startswith("TimeoutStopSec=")
    )
    assert int(stop_timeout.rstrip("s")) > 30 + 10
    example = (UNITS / "example.env").read_text()
    assert "\nAGENT_QUEUES=" in example


def test_agent_unit_takes_several_queues_from_the_env_file() -> None:
    text = (UNITS / "flowagent-agent@.service").read_text()
    start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    words = start.split()
    # Unbraced, so systemd splits "Q_HIGH Q_LOW" into one argument each (and an unset variable
    # into none: an old env file's AGENT_QUEUE_ID alone still works), right after `start`.
    assert words[1:4] == ["start", "$AGENT_QUEUE_ID", "$AGENT_QUEUES"]
    assert "${AGENT_QUEUES}" not in start and "${AGENT_QUEUE_ID}" not in start


def test_sysusers_file_creates_the_service_user(tmp_path: Path) -> None:
    sysusers = require_tool("systemd-sysusers")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)

    result = subprocess.run(
        [sysusers, f"--root={root}", str(UNITS / "flowagent.sysusers")],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    passwd = (root / "etc/passwd").read_text()
    assert passwd.startswith("flowagent:x:")
    assert ":/var/lib/flowagent:/usr/sbin/nologin" in passwd


# --------------------------------------------------------------------------- sd_notify


@dataclass
class NotifySocket:
    """What systemd is to the agent: an AF_UNIX datagram socket that collects messages."""

    path: Path
    messages: list[tuple[float, dict[str, str]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if line)
            self.messages.append((time.monotonic(), fields))

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()

    def with_key(self, key: str, since: float = 0.0) -> list[tuple[float, dict[str, str]]]:
        return [(t, m) for t, m in list(self.messages) if key in m and t >= since]

    def statuses(self) -> list[str]:
        return [m["STATUS"] for _, m in self.with_key("STATUS")]


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    # A short path: AF_UNIX paths are limited to 107 bytes, pytest's tmp_path can be longer.
    path = Path("/tmp") / f"flowagent-notify-{uuid.uuid4().hex[:12]}.sock"
    listener = NotifySocket(path)
    try:
        yield listener
    finally:
        listener.close()
        path.unlink(missing_ok=True)


server = server_fixture("systemd")


def post(api: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = api.post(path, json=body)
    assert response.status_code in (200, 201), response.text
    return dict(response.json())


def run_state(api: httpx.Client, run_id: str) -> str:
    return str(api.get(f"flow_runs/{run_id}").json()["state"]["type"])


def max_gap(times: list[float]) -> float:
    return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


def test_agent_notifies_ready_watchdog_status_and_stopping(
    server: Server, notify_socket: NotifySocket, tmp_path: Path
) -> None:
    api = server.client()
    queue = post(api, "work_queues", {"name": f"q-{uuid.uuid4().hex[:8]}"})
    marker = tmp_path / "go"
    waiting = post(
        api,
        "deployments",
        {
            "name": f"d-{uuid.uuid4().hex[:8]}",
            "work_queue_id": queue["id"],
            "working_dir": str(FLOWS),
            "entrypoint": "sample.py:wait_for_file",
            "parameters": {"marker": str(marker)},
        },
    )
    leak_check = post(
        api,
        "deployments",
        {
            "name": f"d-{uuid.uuid4().hex[:8]}",
            "work_queue_id": queue["id"],
            "command": ["sh", "-c", 'echo "notify=${NOTIFY_SOCKET:-unset}"'],
        },
    )
    name = f"sd-{uuid.uuid4().hex[:8]}"
    agent = start_agent(
        server,
        queue["id"],
        "--name",
        name,
        NOTIFY_SOCKET=str(notify_socket.path),
        WATCHDOG_USEC="600000",  # 0.6 s: the agent pings every 0.2 s
        AGENT_HEARTBEAT_SECONDS="0.5",
        **block_loop_on_sigusr1(3),
    )
    try:
        # READY=1 comes once the queue is resolved and the agent registered with the server.
        wait_for(lambda: notify_socket.with_key("READY"), timeout=20, what="READY=1")
        (_, ready), *_ = notify_socket.with_key("READY")
        assert ready["READY"] == "1"
        assert f"polling work queue {queue['name']}" in ready["STATUS"]
        assert "0/10 runs; API reachable" in ready["STATUS"]
        assert name in {a["name"] for a in api.get("agents").json()}

        wait_for(lambda: len(notify_socket.with_key("WATCHDOG")) >= 5, what="watchdog pings")
        assert all(m["WATCHDOG"] == "1" for _, m in notify_socket.with_key("WATCHDOG"))

        # STATUS follows the runs in flight.
        run = post(api, f"deployments/{waiting['id']}/runs", {})
        wait_for(lambda: run_state(api, run["id"]) == "RUNNING", what="the run to be RUNNING")
        wait_for(
            lambda: any(s.startswith("1/10 runs") for s in notify_socket.statuses()),
            what="STATUS with one run in flight",
        )

        # A flow cannot talk to systemd for the agent: the variables are not passed on.
        leak = post(api, f"deployments/{leak_check['id']}/runs", {})
        wait_for(lambda: run_state(api, leak["id"]) == "COMPLETED", what="the env check run")
        lines = [line["line"] for line in api.get(f"flow_runs/{leak['id']}/logs").json()]
        assert "notify=unset" in lines

        # A blocked event loop sends no pings; they come back when it runs again.
        blocked_at = time.monotonic()
        agent.send_signal(signal.SIGUSR1)
        wait_for(
            lambda: notify_socket.with_key("WATCHDOG", since=blocked_at + 3.2),
            timeout=10,
            what="pings after the loop was unblocked",
        )
        around = [t for t, _ in notify_socket.with_key("WATCHDOG", since=blocked_at - 1)]
        assert max_gap(around) > 2.5, f"pings went on while the loop was blocked: {around}"
        before = [t for t, _ in notify_socket.with_key("WATCHDOG") if t < blocked_at]
        assert max_gap(before[-10:]) < 1.0

        # SIGTERM: STOPPING=1 at once, then the drain; the run finishes, the agent exits 0.
        agent.send_signal(signal.SIGTERM)
        wait_for(lambda: notify_socket.with_key("STOPPING"), what="STOPPING=1")
        (_, stopping), *_ = notify_socket.with_key("STOPPING")
        assert stopping["STOPPING"] == "1"
        assert agent.poll() is None, "the agent drains before it exits"
        marker.touch()
        assert agent.wait(30) == 0
        assert run_state(api, run["id"]) == "COMPLETED"
        assert len(notify_socket.with_key("READY")) == 1
    finally:
        stop(agent)
        api.close()


def test_no_ready_when_the_queue_cannot_be_resolved(
    server: Server, notify_socket: NotifySocket
) -> None:
    agent = start_agent(server, str(uuid.uuid4()), NOTIFY_SOCKET=str(notify_socket.path))

    assert agent.wait(30) != 0
    assert notify_socket.with_key("READY") == []


# --------------------------------------------------------------------------- the notifier


def test_notifier_takes_the_variables_out_of_the_environment(notify_socket: NotifySocket) -> None:
    env = {"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "2000000", "KEEP": "1"}
    env["WATCHDOG_PID"] = str(os.getpid())

    notifier = SystemdNotifier.from_env(env)

    assert env == {"KEEP": "1"}
    assert notifier.watchdog_seconds == 2.0
    assert notifier.ready("up") and notifier.stopping("bye")
    assert not notifier.stopping("again"), "STOPPING=1 is sent once"
    wait_for(lambda: len(notify_socket.messages) == 2, what="two messages")
    assert [m for _, m in notify_socket.messages] == [
        {"READY": "1", "STATUS": "up"},
        {"STOPPING": "1", "STATUS": "bye"},
    ]
    notifier.close()


def test_notifier_ignores_a_watchdog_meant_for_another_process() -> None:
    env = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid() + 1)}

    notifier = SystemdNotifier.from_env(env)

    assert notifier.watchdog_seconds is None
    assert not notifier.enabled
    assert not notifier.ready("nobody listens"), "without NOTIFY_SOCKET nothing is sent"


def test_notifier_speaks_to_an_abstract_socket_and_survives_a_missing_one() -> None:
    name = f"flowagent-test-{uuid.uuid4().hex}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind("\0" + name)
    listener.settimeout(5)
    notifier = SystemdNotifier("@" + name)
    try:
        assert notifier.status("multi\nline   status")
        assert listener.recv(4096) == b"STATUS=multi line status"
    finally:
        listener.close()
    try:
        assert not notifier.watchdog()
        assert not notifier.watchdog(), "a failure is logged once and never raised"
    finally:
        notifier.close()
