"""Secrets on disk are the owner's alone: the home 0700, the database and config.toml 0600.

With the usual umask (022) these were world-readable: the database holds deployments' and runs'
env, config.toml the API key. Real commands, a real server and a real agent on fresh homes.
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import AGENT, base_env, make_queue, running_server

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    # What a login shell has; children inherit it.
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_config_set_creates_a_private_home_and_config_file(tmp_path: Path) -> None:
    home = tmp_path / "home"
    result = subprocess.run(
        [AGENT, "config", "set", "api_key", "k3y-0123456789"],
        env=base_env(home),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert mode(home) == 0o700
    assert mode(home / "config.toml") == 0o600


def test_config_set_tightens_an_existing_config_file(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text("limit = 2\n")
    assert mode(home / "config.toml") == 0o644
    subprocess.run(
        [AGENT, "config", "set", "api_key", "k3y-0123456789"],
        env=base_env(home),
        check=True,
        capture_output=True,
        timeout=60,
    )
    assert mode(home / "config.toml") == 0o600
    assert mode(home) == 0o755  # an existing home is the user's choice (see agent/private.py)


def test_server_and_agent_create_private_homes_and_database(tmp_path: Path) -> None:
    home = tmp_path / "server-home"
    agent_home = tmp_path / "agent-home"
    # The helper makes its own directory for the server's log; the home is another, new one.
    with (
        running_server(tmp_path / "logs", {"AGENT_HOME": str(home)}) as server,
        server.client() as api,
    ):
        assert mode(home) == 0o700
        db = home / "flowagent.db"
        assert mode(db) == 0o600
        for suffix in ("-wal", "-shm"):
            sidecar = db.with_name(db.name + suffix)
            if sidecar.exists():
                assert mode(sidecar) == 0o600, sidecar
        queue = make_queue(api)
        agent = subprocess.run(
            [AGENT, "start", queue["id"], "--run-once", "--name", "modes"],
            env=server.env | {"AGENT_HOME": str(agent_home)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert agent.returncode == 0, agent.stdout + agent.stderr
        assert mode(agent_home) == 0o700


def test_an_existing_world_readable_database_is_tightened(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with running_server(home):
        pass
    db = home / "flowagent.db"
    db.chmod(0o644)
    with running_server(home) as server:
        assert mode(db) == 0o600
        assert "now 0600" in (server.home / "server.log").read_text()
