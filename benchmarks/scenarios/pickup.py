"""(1) Ad-hoc pickup and (3) dispatch overhead, measured together on the same runs.

One agent (subprocess runner, defaults) waits on an otherwise idle embedded server. Runs are
created one at a time, each after the previous one completed and a short random pause, so the
agent is always sitting in its long poll when the run arrives. Pickup is the wall-clock time from
just before the POST that creates the run to the timestamp the flow writes as its first act.
Dispatch is the agent's share of it: from the server's record of the run's creation (the
SCHEDULED state it writes in the transaction that inserts the run) to the same first act.

Between runs, and so under the same machine load, the harness measures the two floors a dispatch
cannot beat: starting ``python -c pass`` from Python (the same interpreter the flows run with,
until it exits) and a kept-alive loopback HTTP round trip to the same server (GET /api/health).
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.api import NativeApi, parse_ts
from benchmarks.core import Context, Section, ms
from benchmarks.lab import wait_for
from benchmarks.stats import Figure, Target, percentile

WARM_UP = 2


def run(ctx: Context, sections: dict[str, Section]) -> None:
    pickup, dispatch = sections.get("pickup"), sections.get("dispatch")
    n = ctx.sizes.pickup_runs if pickup is not None else ctx.sizes.floor_samples
    out = ctx.lab.path("pickup-stamps")
    with ctx.lab.native_server("pickup-server") as server:
        api = NativeApi(server.url)
        queue = api.queue()
        deployment = api.deployment(queue["id"], "bench.py:first_act", out=str(out))
        ctx.lab.agent(server.url, queue["id"], name="pickup-agent")
        probe = httpx.Client(base_url=server.url + "/", timeout=30)
        probe.get("health")  # open the connection that the samples keep alive
        for _ in range(WARM_UP):
            one_run(api, deployment, out)
        ctx.say(f"pickup: {n} ad-hoc runs, one at a time, floors measured in between")
        samples: list[dict[str, Any]] = []
        spawn: list[float] = []
        rtt: list[float] = []
        for _ in range(n):
            time.sleep(random.uniform(0.1, 0.3))  # the agent is back in its long poll
            samples.append(one_run(api, deployment, out))
            spawn.append(spawn_floor())
            rtt.append(http_floor(probe))
        for sample in samples:
            add_states(api, sample)
        probe.close()
        api.close()

    picked = [ms(s["first_act"] - s["created"]) for s in samples]
    if pickup is not None:
        pickup.add(
            Figure.distribution(
                "pickup",
                "run created → flow's first act",
                "ms",
                picked,
                [Target("p50", "<=", 50), Target("p99", "<=", 250)],
                note="subprocess runner, embedded server, agent idle in its long poll",
            )
        )
        for name, start, end in PHASES:
            pickup.add(
                Figure.distribution("pickup", name, "ms", [ms(s[end] - s[start]) for s in samples])
            )
        pickup.details["samples"] = samples
    if dispatch is not None:
        dispatched = [ms(s["first_act"] - s["scheduled"]) for s in samples if "scheduled" in s]
        fill_dispatch(dispatch, dispatched, spawn, rtt)


#: Where a pickup's time goes, from the server's state history.
PHASES = [
    ("  created → claimed (PENDING)", "created", "pending"),
    ("  claimed → RUNNING recorded", "pending", "running"),
    ("  RUNNING → flow's first act", "running", "first_act"),
    ("  create request's round trip", "created", "answered"),
    ("  run stored (SCHEDULED recorded) → first act", "scheduled", "first_act"),
]


def fill_dispatch(
    section: Section, picked: list[float], spawn: list[float], rtt: list[float]
) -> None:
    """``picked``: each run's time from its creation on the server to the flow's first act."""
    section.add(
        Figure.distribution(
            "dispatch",
            "dispatch: run stored → first act",
            "ms",
            picked,
            note="from the server's record of the run's creation (its SCHEDULED state), so "
            "without the create request's own round trip; the pickup's runs",
        )
    )
    section.add(Figure.distribution("dispatch", "floor: spawn `python -c pass`", "ms", spawn))
    section.add(Figure.distribution("dispatch", "floor: kept-alive loopback GET", "ms", rtt))
    if picked and spawn and rtt:
        both = [a + b for a, b in zip(spawn, rtt, strict=True)]
        for q in (50, 95):
            section.add(
                Figure.scalar(
                    "dispatch",
                    f"ratio dispatch / spawn floor (p{q})",
                    "x",
                    percentile(picked, q) / percentile(spawn, q),
                    [Target("value", "<=", 2)] if q == 50 else [],
                )
            )
        section.add(
            Figure.scalar(
                "dispatch",
                "ratio dispatch / (spawn + GET) (p50)",
                "x",
                percentile(picked, 50) / percentile(both, 50),
            )
        )


def one_run(api: NativeApi, deployment: str, out: Path) -> dict[str, Any]:
    created = time.time()
    run_id = api.run(deployment)
    answered = time.time()
    stamp = out / run_id
    wait_for(stamp.exists, 60, f"run {run_id}'s first act", interval=0.002)
    first_act = float(wait_for(stamp.read_text, 5, "the stamp's content", interval=0.002))
    wait_for(lambda: _terminal(api, run_id), 60, f"run {run_id} to finish", interval=0.01)
    return {"run_id": run_id, "created": created, "answered": answered, "first_act": first_act}


def _terminal(api: NativeApi, run_id: str) -> bool:
    state = str(api.call("GET", f"flow_runs/{run_id}")["state"]["type"])
    if state in ("FAILED", "CRASHED", "CANCELLED"):
        raise RuntimeError(f"run {run_id} ended {state}")
    return state == "COMPLETED"


def add_states(api: NativeApi, sample: dict[str, Any]) -> None:
    """When the server recorded SCHEDULED (the run's creation, in the transaction that inserted
    it), PENDING (the claim) and RUNNING (the agent's report)."""
    for state in api.states(sample["run_id"]):
        key = state["type"].lower()
        if key in ("scheduled", "pending", "running", "completed") and key not in sample:
            sample[key] = parse_ts(state["timestamp"])


def spawn_floor() -> float:
    """Milliseconds to start ``python -c pass`` from Python and see it exit."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return ms(time.perf_counter() - t0)


def http_floor(http: httpx.Client) -> float:
    """Milliseconds for one kept-alive loopback GET of the server's /api/health."""
    t0 = time.perf_counter()
    http.get("health").raise_for_status()
    return ms(time.perf_counter() - t0)
