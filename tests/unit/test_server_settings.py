"""The server's settings come from the one settings object, like everything else."""

from __future__ import annotations

from pathlib import Path

from agent.config import load_settings
from agent.server.settings import from_settings


def test_server_settings_follow_the_layers(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("lease_seconds = 12\nschedule_max_runs = 7\n")
    env = {
        "AGENT_HOME": str(tmp_path),
        "AGENT_LATE_AFTER_SECONDS": "3",
        "AGENT_SCHEDULE_HORIZON_SECONDS": "3600",
    }
    settings = from_settings(load_settings({"server_port": "4321"}, env))

    assert settings.home == tmp_path
    assert settings.port == 4321
    assert settings.lease_seconds == 12
    assert settings.schedule_max_runs == 7
    assert settings.late_after_seconds == 3
    assert settings.schedule_horizon_seconds == 3600
    assert settings.missed_after_seconds == 300
