"""Host readings and resource-aware claiming, driven by injected readings (never by loading the
machine): thresholds, the shared sampler, the claim gate's pause/resume and its log-once rule."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from structlog.testing import capture_logs
from typer.testing import CliRunner

from agent.cli.app import app
from agent.config import load_settings, parse_size
from agent.errors import ConfigError
from agent.models import HostMetrics
from agent.resources import host_metrics
from agent.throttle import ClaimGate, HostSampler, Thresholds, human_bytes

GIB = 1 << 30


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("AGENT_"):
            monkeypatch.delenv(name)


def reading(cpu: float = 10, free: int = 8 * GIB, load: float | None = 0.5) -> HostMetrics:
    return HostMetrics(
        cpu_percent=cpu, memory_percent=50, load_1m=load, memory_available_bytes=free
    )


class Readings:
    """A host whose readings the test sets."""

    def __init__(self) -> None:
        self.now = reading()
        self.calls = 0

    def __call__(self) -> HostMetrics:
        self.calls += 1
        return self.now


def test_host_metrics_are_plausible() -> None:
    metrics = host_metrics()
    assert 0 <= metrics.cpu_percent <= 100
    assert 0 < metrics.memory_percent <= 100
    assert metrics.memory_available_bytes and metrics.memory_available_bytes > 0


@pytest.mark.parametrize(
    ("text", "size"),
    [("1024", 1024), ("500M", 500 << 20), ("2G", 2 * GIB), ("1.5GiB", 3 * GIB // 2), ("8k", 8192)],
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "lots", "-1M", "0", "5X"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_threshold_settings_layer_and_validate(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('min_free_memory = "1G"\nmax_load = 4\n')
    settings = load_settings(env={"AGENT_MAX_CPU_PERCENT": "85"}, home=tmp_path)

    assert Thresholds.from_settings(settings) == Thresholds(85.0, GIB, 4.0)
    assert load_settings(env={"AGENT_MAX_LOAD": "off"}, home=tmp_path).max_load is None
    for env in ({"AGENT_MAX_CPU_PERCENT": "150"}, {"AGENT_MIN_FREE_MEMORY": "plenty"}):
        with pytest.raises(ConfigError, match="bad value"):
            load_settings(env=env, home=tmp_path)


def test_start_flags_are_validated_like_settings(tmp_path: Path) -> None:
    queue = "0c6e6f40-8f77-4a30-9a5b-6b3d1c1f0a11"
    result = CliRunner().invoke(
        app, ["--home", str(tmp_path), "start", queue, "--min-free-memory", "lots"]
    )

    assert result.exit_code == 1
    assert "--min-free-memory" in result.output
    assert "500M" in result.output


def test_thresholds_name_what_is_exceeded() -> None:
    thresholds = Thresholds(max_cpu_percent=90, min_free_memory=GIB, max_load=4)

    assert thresholds.exceeded(reading()) is None
    assert thresholds.exceeded(reading(cpu=95)) == "cpu 95% > 90%"
    assert thresholds.exceeded(reading(free=GIB // 2)) == "free memory 512.0M < 1.0G"
    assert thresholds.exceeded(reading(cpu=99, load=6.5)) == "cpu 99% > 90%; load 6.50 > 4"
    # A platform without a load average never trips the load threshold.
    assert thresholds.exceeded(reading(load=None)) is None
    assert not Thresholds().active


def test_human_bytes() -> None:
    assert human_bytes(512) == "512B"
    assert human_bytes(1536) == "1.5K"
    assert human_bytes(3 * (1 << 40)) == "3.0T"


def test_sampler_reads_at_most_once_per_interval() -> None:
    host, clock = Readings(), [0.0]
    sampler = HostSampler(host, min_interval=1.0, clock=lambda: clock[0])

    sampler.latest()
    clock[0] = 0.5
    sampler.latest()
    assert host.calls == 1
    clock[0] = 1.0
    sampler.latest()
    assert host.calls == 2


def test_gate_without_thresholds_never_reads_the_host() -> None:
    host = Readings()
    gate = ClaimGate(Thresholds(), HostSampler(host))

    assert gate.check() is None
    assert host.calls == 0


def test_gate_pauses_and_resumes_logging_each_change_once() -> None:
    host = Readings()
    gate = ClaimGate(Thresholds(max_cpu_percent=80), HostSampler(host, min_interval=0))

    with capture_logs() as logs:
        assert gate.check() is None
        host.now = reading(cpu=95)
        for cpu in (95, 97, 99):  # several polls while busy: one log line
            host.now = reading(cpu=cpu)
            assert gate.check() == f"cpu {cpu}% > 80%"
        host.now = reading(cpu=20)
        assert gate.check() is None
        assert gate.check() is None

    assert [(e["event"], e["log_level"]) for e in logs] == [
        ("claiming_paused", "warning"),
        ("claiming_resumed", "info"),
    ]
    assert logs[0]["reason"] == "cpu 95% > 80%"
    assert gate.paused_reason is None


def test_wait_open_returns_once_the_host_is_below_the_thresholds() -> None:
    host = Readings()
    host.now = reading(free=GIB // 4)
    gate = ClaimGate(
        Thresholds(min_free_memory=GIB), HostSampler(host, min_interval=0), recheck_seconds=0.01
    )

    async def scenario() -> None:
        waiting = asyncio.create_task(gate.wait_open())
        await asyncio.sleep(0.05)
        assert not waiting.done()
        assert gate.paused_reason is not None
        host.now = reading(free=2 * GIB)
        await asyncio.wait_for(waiting, 1)

    asyncio.run(scenario())
    assert gate.paused_reason is None
