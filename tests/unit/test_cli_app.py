"""The command line without a server: global options, error printing, exit codes, and the
checks that happen before any request (every case here fails or finishes without a socket)."""

from __future__ import annotations

import importlib.util
import os
import socket
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from typer.testing import CliRunner

from agent import __version__
from agent.cli.app import app
from agent.cli.output import age
from agent.config import Settings, Source
from agent.models import utcnow

QUEUE_ID = "85bc6f10-e717-4295-90b4-9d49b8ccd32b"
runner = CliRunner()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("AGENT_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AGENT_HOME", str(tmp_path / "home"))
    # Nothing listens here: a command that wrongly reached the network would fail loudly.
    monkeypatch.setenv("AGENT_API_URL", "http://127.0.0.1:9/api")
    monkeypatch.setenv("AGENT_STARTUP_TIMEOUT_SECONDS", "0")


def invoke(*args: str) -> Any:
    return runner.invoke(app, list(args))


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout == f"flowagent {__version__}\n"


def test_no_arguments_prints_help_and_unknown_command_is_a_usage_error() -> None:
    assert "Usage" in invoke().output
    result = invoke("frobnicate")
    assert result.exit_code == 2


def test_every_command_group_has_help() -> None:
    for group in (
        "server",
        "work-queue",
        "deployment",
        "flow-run",
        "agents",
        "runner",
        "config",
        "database",
    ):
        result = invoke(group, "--help")
        assert result.exit_code == 0, (group, result.output)


# --------------------------------------------------------------------------- agent start


def test_start_refuses_a_queue_given_twice_or_blank() -> None:
    # Before any server is asked: the same queue twice (by the same UUID in another case too).
    queue = "0C1F7E2A-0000-4000-8000-000000000001"
    result = invoke("start", queue.lower(), "etl", queue)
    assert result.exit_code == 1
    assert result.stderr == (
        f"error: work queue {queue!r} is given twice; name each queue once, highest priority "
        "first\n"
    )
    result = invoke("start", "etl", " ")
    assert result.exit_code == 1
    assert result.stderr == (
        "error: ' ' is not a work queue; give its UUID or name (agent work-queue ls)\n"
    )
    assert result.stdout == ""


def test_start_refuses_limit_zero() -> None:
    result = invoke("start", QUEUE_ID, "--limit", "0")
    assert result.exit_code == 1
    assert "error: --limit: bad value 0 for limit: must be 1 or more" in result.stderr


def test_start_hands_settings_and_options_to_the_daemon(monkeypatch: pytest.MonkeyPatch) -> None:
    import agent.daemon

    seen: list[tuple[Settings, agent.daemon.AgentOptions]] = []

    def fake_run_agent(settings: Settings, options: agent.daemon.AgentOptions) -> int:
        seen.append((settings, options))
        return 3

    monkeypatch.setattr(agent.daemon, "run_agent", fake_run_agent)
    result = invoke(
        "--api-key", "k1", "start", QUEUE_ID, "--tag", "gpu", "--tag", "etl", "--limit", "2",
        "--run-once", "--api-url", "http://other:1/api",
    )  # fmt: skip
    assert result.exit_code == 3
    [(settings, options)] = seen
    assert options == agent.daemon.AgentOptions(
        queues=(str(UUID(QUEUE_ID)),), name=options.name, tags=("gpu", "etl"), run_once=True
    )
    assert options.name == f"{socket.gethostname()}-{QUEUE_ID.replace('-', '')[:8]}"
    assert (settings.limit, settings.source_of("limit")) == (2, Source.FLAG)
    assert settings.api_url == "http://other:1/api"
    assert settings.api_key == "k1"
    assert settings.home == Path(os.environ["AGENT_HOME"])


def test_start_takes_several_queues_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    import agent.daemon

    seen: list[agent.daemon.AgentOptions] = []
    monkeypatch.setattr(agent.daemon, "run_agent", lambda _s, options: seen.append(options) or 0)
    assert invoke("start", "etl-high", QUEUE_ID.upper(), "etl-low").exit_code == 0
    assert invoke("start", "etl-low", QUEUE_ID, "etl-high").exit_code == 0
    first, second = seen
    # Names as given, UUIDs canonical, the order kept: it is the priority.
    assert first.queues == ("etl-high", QUEUE_ID.lower(), "etl-low")
    # Another order is another agent: a name of its own by default.
    assert first.name != second.name
    assert first.name.startswith(f"{socket.gethostname()}-")


# --------------------------------------------------------------------------- agent server start


def test_server_start_passes_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    import agent.logs
    import agent.server.main
    from agent.server.settings import ServerSettings

    served: list[ServerSettings] = []
    monkeypatch.setattr(agent.server.main, "serve", served.append)
    monkeypatch.setattr(agent.logs, "configure_logging", lambda *a, **k: None)
    monkeypatch.setenv("AGENT_SERVER_PORT", "4300")
    monkeypatch.setenv("AGENT_API_KEY", "secret")
    assert invoke("server", "start").exit_code == 0
    assert invoke("server", "start", "--host", "0.0.0.0", "--port", "5000").exit_code == 0
    home = Path(os.environ["AGENT_HOME"])
    assert served == [
        ServerSettings(home=home, host="127.0.0.1", port=4300, api_key="secret"),
        ServerSettings(home=home, host="0.0.0.0", port=5000, api_key="secret"),
    ]
    result = invoke("server", "start", "--port", "70000")
    assert result.exit_code == 1
    assert "--server-port: bad value 70000" in result.stderr


def test_server_missing_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a)
    )
    for command in (["server", "start"], ["database", "reset", "--yes"]):
        result = invoke(*command)
        assert result.exit_code == 1
        assert result.stderr.startswith(
            "error: the embedded server is not installed (missing: uvicorn)\n"
            "hint: pip install 'flowagent[server]'"
        ), result.stderr


def test_database_reset_needs_yes_without_a_terminal(tmp_path: Path) -> None:
    result = invoke("database", "reset")
    assert result.exit_code == 1
    assert "Refusing to ask without a terminal" in result.stderr
    assert "hint: pass --yes" in result.stderr
    assert not (tmp_path / "home" / "flowagent.db").exists()


def test_database_reset_with_yes(tmp_path: Path) -> None:
    result = invoke("database", "reset", "--yes")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "home" / "flowagent.db").exists()


# --------------------------------------------------------------------------- deployment create


def test_deployment_create_checks_before_any_request(tmp_path: Path) -> None:
    cases = {
        ("deployment", "create", "x.py:main", "--queue", "q"): "error: missing --name",
        ("deployment", "create", "x.py:main", "--name", "n"): "error: missing --queue",
        ("deployment", "create", "--name", "n", "--queue", "q"): "error: nothing to run",
        ("deployment", "create", "x.py:f", "--command", "true", "--name", "n", "--queue", "q"): (
            "error: give an ENTRYPOINT or --command, not both"
        ),
        ("deployment", "create", "x.py:f", "--name", "n", "--queue", "q", "--workdir", str(tmp_path)): (
            f"error: entrypoint file '{tmp_path / 'x.py'}' does not exist"
        ),
        ("deployment", "create", "--command", "true", "--name", "n", "--queue", "q", "--param", "x={"): (
            "error: --param x: '{' looks like JSON but does not parse"
        ),
        ("deployment", "create", "--command", "true", "--name", "n", "--queue", "q", "--runner", "subprocess", "--runner-option", "nope=1"): (
            "error: invalid options for runner 'subprocess': unknown option 'nope'"
        ),
        ("deployment", "create", "--command", "true", "--name", "n", "--queue", "q", "--timeout", "0"): (
            "error: invalid deployment: --timeout: Input should be greater than 0"
        ),
    }  # fmt: skip
    for args, message in cases.items():
        result = invoke(*args)
        assert result.exit_code == 1, (args, result.output)
        assert result.stderr.startswith(message), (args, result.stderr)
        assert result.stdout == ""


def test_deployment_create_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: a\ncommand: [oops\n")
    result = invoke("deployment", "create", "--file", str(bad))
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {bad}:3:1: not valid YAML")

    good = tmp_path / "good.yaml"
    good.write_text("name: a\ncommand: 'true'\n")
    result = invoke("deployment", "create", "--file", str(good), "--name", "b", "--tag", "t")
    assert result.exit_code == 1
    assert "do not combine it with --name, --tag" in result.stderr
    result = invoke("deployment", "create", "--file", str(good))
    assert result.exit_code == 1
    assert f"error: {good}:1: no queue: add a 'queue' field or pass --queue" in result.stderr

    missing = tmp_path / "missing.yaml"
    missing.write_text("deployments:\n  - name: a\n    queue: q\n    entrypoint: gone.py:main\n")
    result = invoke("deployment", "create", "--file", str(missing))
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {missing}:2 (deployments[0]): entrypoint file")


def test_run_ids_must_be_uuids() -> None:
    for command in ("inspect", "logs", "cancel"):
        result = invoke("flow-run", command, "12")
        assert result.exit_code == 1
        assert result.stderr.startswith("error: '12' is not a flow-run id (a UUID)")


def test_flow_run_ls_rejects_unknown_states() -> None:
    result = invoke("flow-run", "ls", "--state", "done")
    assert result.exit_code == 1
    assert "hint: states: SCHEDULED, PENDING, RUNNING" in result.stderr


def test_prefect_backend_is_refused_for_management_commands(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AGENT_BACKEND", "prefect")
    result = invoke("work-queue", "ls")
    assert result.exit_code == 1
    assert "backend is 'prefect'" in result.stderr


def test_runner_ls_lists_subprocess() -> None:
    result = invoke("runner", "ls")
    assert result.exit_code == 0
    assert "subprocess" in result.stdout
    assert "runners.subprocess:SubprocessRunner" in result.stdout


# --------------------------------------------------------------------------- output helpers


def test_age() -> None:
    from datetime import timedelta

    now = utcnow()
    assert age(now - timedelta(seconds=12), now) == "12s ago"
    assert age(now - timedelta(minutes=5), now) == "5m ago"
    assert age(now - timedelta(hours=3), now) == "3h ago"
    assert age(now - timedelta(days=3), now) == "3d ago"
    assert age(now + timedelta(minutes=10), now) == "in 10m"
