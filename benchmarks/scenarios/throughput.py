"""(4) Throughput: completed runs per second, and a burst of runs created at once.

Throughput: the runs are created on a paused queue, the agents are started and waiting, and the
clock starts when the queue is resumed; it stops when the server counts every run terminal
(asked every 0.1 s). In-process runs (deployment runner "inprocess", a
trivial sync function) with 1 and with 4 agents on one server; trivial subprocess runs with one.
Each measurement gets a fresh server. The agents' and the server's CPU time over the window and
the requests the server answered say where the time went.

Burst: one agent at its defaults waits on an empty queue; all runs are created at once (32
requests in flight) and must all end COMPLETED.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import psutil

from benchmarks.api import UNFINISHED, NativeApi, create_many
from benchmarks.core import Context, Section
from benchmarks.lab import Proc
from benchmarks.sampling import request_counts, run_counts
from benchmarks.scenarios.common import wait_until
from benchmarks.stats import Figure, Target

TERMINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
#: How often the harness asks whether runs are left (one indexed query answering at most one run).
POLL = 0.1


def run(ctx: Context, sections: dict[str, Section]) -> None:
    if (section := sections.get("throughput")) is not None:
        sizes = ctx.sizes
        for agents in (1, 4):
            result = drain(
                ctx,
                f"inprocess-{agents}",
                sizes.inprocess_runs,
                agents,
                runner="inprocess",
                limit=sizes.inprocess_limit,
            )
            section.add(
                Figure.scalar(
                    "throughput",
                    f"in-process runs/s, {agents} agent{'s' if agents > 1 else ''}",
                    "runs/s",
                    result["runs_per_second"],
                    [Target("value", ">=", 1000)] if agents == 4 else [],
                    n=result["n"],
                    note=_note(result),
                )
            )
            section.details[f"inprocess_{agents}"] = result
        result = drain(
            ctx, "subprocess", sizes.subprocess_runs, 1, runner=None, limit=sizes.subprocess_limit
        )
        section.add(
            Figure.scalar(
                "throughput",
                "trivial subprocess runs/s, 1 agent",
                "runs/s",
                result["runs_per_second"],
                [Target("value", ">=", 40)],
                n=result["n"],
                note=_note(result),
            )
        )
        section.details["subprocess"] = result
    if (section := sections.get("burst")) is not None:
        result = burst(ctx, ctx.sizes.burst_runs)
        section.add(
            Figure.scalar(
                "burst",
                "runs COMPLETED",
                "runs",
                result["states"].get("COMPLETED", 0),
                [Target("value", ">=", result["n"])],
                n=result["n"],
                note=", ".join(f"{k} {v}" for k, v in result["states"].items() if k != "COMPLETED")
                or "none failed or crashed",
            )
        )
        section.add(
            Figure.scalar("burst", "runs/s, created → all terminal", "runs/s", result["rate"])
        )
        section.add(Figure.scalar("burst", "creating them all", "s", result["create_seconds"]))
        section.details.update(result)


def _note(result: dict[str, Any]) -> str:
    per_run = result["cpu_ms_per_run"]
    states = ", ".join(f"{k} {v}" for k, v in result["states"].items() if k != "COMPLETED")
    return (
        f"limit {result['limit']}; CPU ms/run: agents {per_run['agents']:.2f}, "
        f"server {per_run['server']:.2f}; {result['requests_per_run']:.1f} req/run"
        + (f"; {states}" if states else "")
    )


def drain(
    ctx: Context, name: str, n: int, agents: int, *, runner: str | None, limit: int
) -> dict[str, Any]:
    """``n`` runs on a paused queue, ``agents`` agents waiting: resume and time them all."""
    with ctx.lab.native_server(f"{name}-server") as server:
        api = NativeApi(server.url)
        queue = api.queue(paused=True)
        deployment = api.deployment(queue["id"], "bench.py:noop", runner=runner)
        create_many(api, deployment, [{} for _ in range(n)])
        procs = [
            ctx.lab.agent(server.url, queue["id"], "--limit", str(limit), name=f"{name}-agent-{i}")
            for i in range(agents)
        ]
        ctx.say(f"throughput {name}: {n} runs, {agents} agent(s), limit {limit}")
        with httpx.Client(timeout=30) as http:
            before = request_counts(http, server.url)
            cpu0 = _cpu([server.proc, *procs])
            t0 = time.time()
            api.pause(queue["id"], False)
            t1 = wait_until(
                lambda: not api.any_in(queue["id"], *UNFINISHED),
                timeout=60 + n / 5,
                what=f"{n} runs to finish",
                interval=POLL,
            )
            cpu1 = _cpu([server.proc, *procs])
            counts = run_counts(http, server.url)
            after = request_counts(http, server.url)
        api.close()
    requests = {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}
    requests = {k: v for k, v in requests.items() if "/metrics" not in k}
    agent_cpu = sum(cpu1[p] - cpu0[p] for p in cpu1 if p != server.proc.pid)
    return {
        "n": n,
        "agents": agents,
        "limit": limit,
        "runner": runner or "subprocess",
        "seconds": t1 - t0,
        "runs_per_second": n / (t1 - t0),
        "states": {s: counts.get(s, 0) for s in TERMINAL if counts.get(s, 0)},
        "cpu_seconds": {
            "agents": agent_cpu,
            "server": cpu1[server.proc.pid] - cpu0[server.proc.pid],
        },
        "cpu_ms_per_run": {
            "agents": 1000 * agent_cpu / n,
            "server": 1000 * (cpu1[server.proc.pid] - cpu0[server.proc.pid]) / n,
        },
        "requests": requests,
        "requests_per_run": sum(requests.values()) / n,
    }


def _cpu(procs: list[Proc]) -> dict[int, float]:
    """CPU seconds (user + system) of each process, its reaped children excluded."""
    used: dict[int, float] = {}
    for proc in procs:
        times = psutil.Process(proc.pid).cpu_times()
        used[proc.pid] = times.user + times.system
    return used


def burst(ctx: Context, n: int) -> dict[str, Any]:
    with ctx.lab.native_server("burst-server") as server:
        api = NativeApi(server.url)
        queue = api.queue()
        deployment = api.deployment(queue["id"], "bench.py:noop")
        ctx.lab.agent(server.url, queue["id"], name="burst-agent")
        ctx.say(f"burst: {n} subprocess runs created at once, one agent at its defaults")
        t0 = time.time()
        create_many(api, deployment, [{} for _ in range(n)])
        created = time.time()
        with httpx.Client(timeout=30) as http:
            t1 = wait_until(
                lambda: not api.any_in(queue["id"], *UNFINISHED),
                timeout=120 + n / 2,
                what=f"{n} runs to finish",
                interval=POLL,
            )
            counts = run_counts(http, server.url)
        api.close()
    return {
        "n": n,
        "create_seconds": created - t0,
        "seconds": t1 - t0,
        "rate": n / (t1 - t0),
        "states": {s: counts.get(s, 0) for s in TERMINAL if counts.get(s, 0)},
    }
