"""`agent start --pool NAME [--work-queue NAME]...` and `--prefetch-seconds`: what reaches the
daemon, and what is refused before any request (nothing listens at the API URL here)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from agent.backends.prefect_pools import pool_queue_id
from agent.cli.app import app
from agent.config import Settings, Source

QUEUE_ID = "85bc6f10-e717-4295-90b4-9d49b8ccd32b"
runner = CliRunner()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("AGENT_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AGENT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("AGENT_API_URL", "http://127.0.0.1:9/api")
    monkeypatch.setenv("AGENT_STARTUP_TIMEOUT_SECONDS", "0")


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Settings, Any]]:
    import agent.daemon

    calls: list[tuple[Settings, Any]] = []

    def fake_run_agent(settings: Settings, options: Any) -> int:
        calls.append((settings, options))
        return 0

    monkeypatch.setattr(agent.daemon, "run_agent", fake_run_agent)
    return calls


def invoke(*args: str) -> Any:
    return runner.invoke(app, list(args))


def test_pool_and_queues_reach_the_settings_and_the_daemon_knows_the_pool_by_its_id(
    seen: list[tuple[Settings, Any]],
) -> None:
    result = invoke(
        "start",
        "--pool",
        "etl",
        "--work-queue",
        "high",
        "--work-queue",
        "low",
        "--work-queue",
        "high",
    )
    assert result.exit_code == 0, result.output
    [(settings, options)] = seen
    assert (settings.pool, settings.work_queues) == ("etl", ("high", "low"))
    assert options.queues == (str(pool_queue_id("etl")),) and pool_queue_id("etl") != pool_queue_id(
        "etl2"
    )
    assert options.name == f"{socket.gethostname()}-{pool_queue_id('etl').hex[:8]}"


def test_a_pool_from_the_environment_and_a_queue_on_the_command_line_serve_the_queue(
    seen: list[tuple[Settings, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENT_POOL", "etl")
    monkeypatch.setenv("AGENT_WORK_QUEUES", "a, b")
    # (`agent start` alone prints its help: any option will do.)
    assert invoke("start", "--limit", "2").exit_code == 0
    assert invoke("start", QUEUE_ID).exit_code == 0
    [(from_env, by_pool), (flagged, by_queue)] = seen
    assert (from_env.pool, from_env.work_queues) == ("etl", ("a", "b"))
    assert by_pool.queues == (str(pool_queue_id("etl")),)
    assert (flagged.pool, flagged.work_queues, by_queue.queues) == (None, (), (QUEUE_ID,))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((QUEUE_ID, "--pool", "etl"), "error: give work queues or --pool, not both"),
        (("--limit", "2"), "error: no work queue to serve"),
        (("--work-queue", "a"), "error: --work-queue names queues of a Prefect work pool"),
        (
            ("--prefetch-seconds", "-1"),
            "--prefetch-seconds: bad value -1.0 for prefetch_seconds: must be 0 or more",
        ),
    ],
)
def test_what_is_refused_before_any_request(
    seen: list[tuple[Settings, Any]], args: tuple[str, ...], message: str
) -> None:
    result = invoke("start", *args)
    assert result.exit_code == 1, result.output
    assert message in result.stderr
    assert seen == []


def test_prefetch_seconds_flag_beats_the_environment(
    seen: list[tuple[Settings, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENT_PREFETCH_SECONDS", "7")
    assert invoke("start", QUEUE_ID).exit_code == 0
    assert invoke("start", QUEUE_ID, "--prefetch-seconds", "2.5").exit_code == 0
    assert invoke("start", QUEUE_ID, "--prefetch-seconds", "0").exit_code == 0
    got = [(s.prefetch_seconds, s.source_of("prefetch_seconds")) for s, _ in seen]
    assert got == [(7.0, Source.ENV), (2.5, Source.FLAG), (0.0, Source.FLAG)]
