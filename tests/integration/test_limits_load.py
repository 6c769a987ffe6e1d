"""Concurrency limits under load: four real agents (two AGENT_HOMEs, as two hosts would be),
many runs made at once, the limits sampled from the API every 50 ms and read back from what
the flows themselves wrote."""

from __future__ import annotations

import subprocess
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import (
    ActiveSampler,
    Server,
    make_deployment,
    make_queue,
    make_run,
    server_fixture,
    start_agent,
    stop,
    wait_for,
)

pytestmark = pytest.mark.integration

TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
# Each flow notes its start and end in one shared file (O_APPEND: lines do not interleave).
FLOW = 'echo "start $DEP $SEQ" >> "$OUT"; sleep 0.2; echo "end $DEP $SEQ" >> "$OUT"'


server = server_fixture("load")


@pytest.fixture
def four_agents(server: Server, tmp_path: Path) -> Iterator[Any]:
    """Four agents on the given queues, two per AGENT_HOME; all must stop cleanly."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*queues: dict[str, Any]) -> None:
        for i in range(4):
            home = tmp_path / f"host{i % 2}"
            home.mkdir(exist_ok=True)
            started.append(
                start_agent(
                    server,
                    *[q["id"] for q in queues],
                    "--name",
                    f"load-{i}-{uuid.uuid4().hex[:6]}",
                    "--limit",
                    "3",
                    log_path=tmp_path / f"agent{i}.log",
                    AGENT_HOME=str(home),
                )
            )

    yield start
    for process in started:
        assert stop(process) == 0


def most_at_once(lines: list[str], matches: Any) -> int:
    """The most flows running together, from their own start/end lines."""
    running = peak = 0
    for line in lines:
        event, dep, _ = line.split()
        if matches(dep):
            running += 1 if event == "start" else -1
            peak = max(peak, running)
    return peak


def make_runs(
    api: httpx.Client, deployments: dict[str, dict[str, Any]], per: int, out: Path
) -> dict[str, list[str]]:
    """``per`` runs of each deployment, interleaved, each due 1 ms after the one before."""
    base = datetime.now(UTC) - timedelta(seconds=5)
    made: dict[str, list[str]] = {key: [] for key in deployments}
    seq = 0
    for i in range(per):
        for key, deployment in deployments.items():
            seq += 1
            start = (base + timedelta(milliseconds=seq)).isoformat()
            env = {"DEP": key, "SEQ": str(i), "OUT": str(out)}
            made[key].append(make_run(api, deployment, expected_start_time=start, env=env)["id"])
    return made


def test_deployment_and_tag_limits_hold_across_four_agents(
    server: Server, api: httpx.Client, four_agents: Any, tmp_path: Path
) -> None:
    db = f"db-{uuid.uuid4().hex[:8]}"
    api.post("concurrency_limits", json={"tag": db, "limit": 2}).raise_for_status()
    first, second = make_queue(api), make_queue(api)
    command = ["sh", "-c", FLOW]
    deployments = {
        "a": make_deployment(api, first, command=command, tags=[db], concurrency_limit=1),
        "b": make_deployment(api, first, command=command, tags=[db]),
        "c": make_deployment(api, second, command=command, tags=[db]),
    }
    out = tmp_path / "flows.out"
    by_id = {d["id"]: key for key, d in deployments.items()}

    with ActiveSampler(server.url) as sampler:
        made = make_runs(api, deployments, 20, out)  # 60 runs, before any agent is up
        four_agents(first, second)
        everything = [run for runs in made.values() for run in runs]

        def all_done() -> bool:
            return all(
                api.get(f"flow_runs/{r}").json()["state"]["type"] in TERMINAL for r in everything
            )

        wait_for(all_done, timeout=240, interval=0.5, what="all 60 runs to end")

    assert len(sampler.samples) > 100  # the sampler saw the whole thing, not a moment of it
    assert sampler.most(lambda run: by_id.get(run["deployment_id"]) == "a") <= 1
    assert sampler.most(lambda run: db in run["tags"]) <= 2
    assert sampler.most(lambda run: db in run["tags"]) == 2  # the limit was reached, not starved

    runs = {r: api.get(f"flow_runs/{r}").json() for r in everything}
    assert Counter(run["state"]["type"] for run in runs.values()) == {"COMPLETED": 60}
    lines = out.read_text().splitlines()
    assert len(lines) == 120  # each flow started and ended once: none lost, none run twice
    assert most_at_once(lines, lambda dep: dep == "a") == 1
    assert most_at_once(lines, lambda dep: True) == 2
    # Each deployment's runs were handed out in expected-start order.
    for key, ids in made.items():
        claimed_at = [pending_time(api, run_id) for run_id in ids]
        assert claimed_at == sorted(claimed_at), key
    started_a = [int(line.split()[2]) for line in lines if line.startswith("start a ")]
    assert started_a == list(range(20))
    # Held back, they waited (visibly), and none turned Late.
    names = {s["name"] for r in everything for s in api.get(f"flow_runs/{r}/states").json()}
    assert "AwaitingConcurrencySlot" in names and "Late" not in names


def pending_time(api: httpx.Client, run_id: str) -> str:
    history = api.get(f"flow_runs/{run_id}/states").json()
    return str(next(s["timestamp"] for s in history if s["type"] == "PENDING"))


def test_cancel_new_cancels_the_surplus_across_four_agents(
    server: Server, api: httpx.Client, four_agents: Any, tmp_path: Path
) -> None:
    queue = make_queue(api)
    deployment = make_deployment(
        api,
        queue,
        command=["sh", "-c", FLOW],
        concurrency_limit=1,
        collision_strategy="cancel-new",
    )
    out = tmp_path / "flows.out"
    with ActiveSampler(server.url) as sampler:
        made = make_runs(api, {"x": deployment}, 12, out)["x"]
        four_agents(queue)

        def all_done() -> bool:
            return all(api.get(f"flow_runs/{r}").json()["state"]["type"] in TERMINAL for r in made)

        wait_for(all_done, timeout=120, interval=0.5, what="all 12 runs to end")

    assert sampler.most(lambda run: run["deployment_id"] == deployment["id"]) <= 1
    states = [api.get(f"flow_runs/{r}").json()["state"] for r in made]
    completed = [s for s in states if s["type"] == "COMPLETED"]
    cancelled = [s for s in states if s["type"] == "CANCELLED"]
    assert len(completed) >= 1 and len(completed) + len(cancelled) == 12
    reason = f"deployment {deployment['name']} at its concurrency limit (1)"
    assert all(s["message"] == reason for s in cancelled)
    lines = out.read_text().splitlines()
    assert len(lines) == 2 * len(completed)  # only the runs that were let go ran
    assert most_at_once(lines, lambda dep: True) == 1
