"""A flow that prints far more than the agent may hold: the agent's memory stays bounded (it
stops reading the flow's output while its lines wait to be shipped, so the flow blocks on write)
and every line still reaches the server, in order (issue 12, item 5)."""

from __future__ import annotations

import hashlib
import threading
import uuid
from pathlib import Path

import psutil
import pytest

from tests.support import Server, server_fixture, start_agent, stop, wait_state

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

LINES = 200_000
WIDTH = 1_000  # bytes per line with its newline: 200 MB in all
#: Generous: an idle agent is ~50 MiB; without the bound, this output took it to 350 MiB.
RSS_BOUND = 150 * 1024 * 1024
PRINTER = f"""
import sys
out = sys.stdout
for i in range({LINES}):
    out.write(f"{{i:09d}} " + "x" * {WIDTH - 11} + "\\n")
"""


server = server_fixture("output-memory")


class PeakRss:
    """Samples a process's RSS in a thread until stopped; ``peak`` is the highest seen."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.peak = 0
        self._process = psutil.Process(pid)
        self._interval = interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stopped.wait(self._interval):
            try:
                self.peak = max(self.peak, self._process.memory_info().rss)
            except psutil.Error:
                return

    def stop(self) -> int:
        self._stopped.set()
        self._thread.join()
        return self.peak


def expected_digest() -> str:
    digest = hashlib.sha256()
    for i in range(LINES):
        digest.update(f"{i:09d} {'x' * (WIDTH - 11)}\n".encode())
    return digest.hexdigest()


def test_a_flow_printing_200_mb_keeps_agent_rss_bounded_and_every_line_arrives_in_order(
    server: Server, tmp_path: Path
) -> None:
    api = server.client()
    queue = api.post("work_queues", json={"name": f"q-{uuid.uuid4().hex[:8]}"}).json()
    deployment = api.post(
        "deployments",
        json={
            "name": f"d-{uuid.uuid4().hex[:8]}",
            "work_queue_id": queue["id"],
            "command": ["python3", "-c", PRINTER],
        },
    ).json()
    run = api.post(f"deployments/{deployment['id']}/runs", json={}).json()
    agent = start_agent(server, queue["id"], log_path=tmp_path / "agent.log")
    sampler = PeakRss(agent.pid)
    try:
        done = wait_state(api, run["id"], timeout=300)
    finally:
        peak = sampler.stop()
        stop(agent)
    assert done["state"]["type"] == "COMPLETED", done["state"]

    digest, count, after = hashlib.sha256(), 0, 0
    while page := api.get(f"flow_runs/{run['id']}/logs", params={"after": after, "limit": 10000}):
        lines = page.json()
        if not lines:
            break
        for line in lines:
            if line["stream"] == "stdout":
                assert line["line"].startswith(f"{count:09d} "), (count, line["line"][:20])
                digest.update((line["line"] + "\n").encode())
                count += 1
        after = lines[-1]["id"]
    api.close()
    assert count == LINES
    assert digest.hexdigest() == expected_digest()
    assert peak < RSS_BOUND, f"agent peak RSS {peak / 2**20:.0f} MiB"
