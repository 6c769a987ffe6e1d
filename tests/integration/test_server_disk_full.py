"""A full disk under the server's database: 503 with Retry-After, never a 500, nothing half-written.

The server's home is a small tmpfs of its own (mounting needs root: CI is root; elsewhere the
test skips), filled up while the server runs.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import running_server, unavailable

pytestmark = pytest.mark.integration


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        unavailable(f"cannot mount a tmpfs here (CI runs as root): {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_a_full_disk_answers_503_and_loses_nothing(small_disk: Path) -> None:
    with running_server(small_disk / "home") as server, server.client() as api:
        queue = api.post("work_queues", json={"name": "full"}).json()
        deployment = api.post(
            "deployments",
            json={"name": "d", "work_queue_id": queue["id"], "command": ["true"]},
        ).json()
        run = api.post(f"deployments/{deployment['id']}/runs", json={}).json()
        filler = small_disk / "filler"
        # Fill what is left of the disk, then write until SQLite runs out of room.
        # Unbuffered: a buffered file keeps what a partial write left over and raises ENOSPC
        # again when it is closed (whether one is left over depends on how much room the
        # database left, to the byte).
        with filler.open("wb", buffering=0) as handle:
            try:
                while True:
                    handle.write(b"\0" * 65536)
            except OSError:
                pass
        line = {"timestamp": "2030-01-01T00:00:00Z", "stream": "stdout", "line": "x" * 4000}
        answers = set()
        for _ in range(200):
            response = api.post(f"flow_runs/{run['id']}/logs", json=[line] * 20)
            answers.add(response.status_code)
            if response.status_code == 503:
                assert response.headers["Retry-After"] == "1"
                assert "disk is full" in response.json()["detail"]
                break
        assert 503 in answers, answers
        assert 500 not in answers
        # Reads still work and the run is whole; a state change is refused, not half-made.
        assert api.get(f"flow_runs/{run['id']}").json()["state"]["type"] == "SCHEDULED"
        refused = api.post(f"flow_runs/{run['id']}/cancel")
        assert refused.status_code == 503, refused.text
        assert api.get(f"flow_runs/{run['id']}").json()["state"]["type"] == "SCHEDULED"

        filler.unlink()  # room again: the same requests succeed
        assert api.post(f"flow_runs/{run['id']}/logs", json=[line]).status_code == 201
        final = api.post(f"flow_runs/{run['id']}/cancel")
        assert final.status_code == 200
        assert final.json()["state"]["type"] == "CANCELLED"
        states = [s["type"] for s in api.get(f"flow_runs/{run['id']}/states").json()]
        assert states == ["SCHEDULED", "CANCELLED"]
