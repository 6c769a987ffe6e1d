"""(7) Side by side on one Prefect 3 server: Prefect's own process worker and our agent.

One ``prefect server start`` (from .prefect-venv); each contender gets its own work pool and
queue on it and a deployment of the same flow file, and runs alone while it is measured:

* Prefect's worker: ``prefect worker start --pool P --type process`` at its defaults (10 s
  query interval, 10 s prefetch); in a full run also with a 1 s query interval;
* our agent: ``agent start <queue-uuid> --runner-option python=.prefect-venv/bin/python``.

Both launch ``python -m prefect.engine`` from .prefect-venv for each run, so the flow's first
act comes after the engine has imported Prefect and reported RUNNING. Measured for each: ad-hoc
pickup (runs created every 3-5 s, created → first act), on-time start (runs due 1-2 s after
their creation, due → first act), and the idle process's RSS and CPU (children excluded).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.api import PrefectApi, parse_ts
from benchmarks.core import Context, Section
from benchmarks.lab import Lab, LabError, PrefectServer, Proc, clean_env, wait_for
from benchmarks.sampling import ProcessWatch
from benchmarks.scenarios.common import collect_stamps, late_ms, stream
from benchmarks.stats import Figure, percentile

LEAD = (1.0, 2.0)
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@dataclass(frozen=True)
class Contender:
    key: str
    label: str
    start: Callable[[Lab, PrefectServer, str, dict[str, Any], Path], Proc]
    footprint: bool = True


def start_prefect_worker(
    query_seconds: float | None,
) -> Callable[[Lab, PrefectServer, str, dict[str, Any], Path], Proc]:
    def start(
        lab: Lab, server: PrefectServer, pool: str, queue: dict[str, Any], home: Path
    ) -> Proc:
        env = clean_env(PREFECT_API_URL=server.url, PREFECT_HOME=str(home))
        if query_seconds is not None:
            env["PREFECT_WORKER_QUERY_SECONDS"] = str(query_seconds)
        name = f"prefect-worker-{pool}"
        proc = lab.start(
            name,
            [
                server.prefect,
                "worker",
                "start",
                "--pool",
                pool,
                "--type",
                "process",
                "--name",
                name,
            ],
            env,
        )
        api = PrefectApi(server.url)
        try:
            wait_for(lambda: _online(proc, api, pool, name), 120, f"{name} to come online", 0.25)
        finally:
            api.close()
        return proc

    return start


def start_our_agent(
    lab: Lab, server: PrefectServer, pool: str, queue: dict[str, Any], home: Path
) -> Proc:
    return lab.agent(
        server.url,
        queue["id"],
        "--runner-option",
        f"python={server.python}",
        name=f"flowagent-{pool}",
        env={"PREFECT_HOME": str(home)},
    )


def _online(proc: Proc, api: PrefectApi, pool: str, name: str) -> bool:
    if not proc.alive():
        raise LabError(f"{proc.name} exited {proc.popen.returncode}:\n{proc.log_text()[-3000:]}")
    return any(w["name"] == name and w["status"] == "ONLINE" for w in api.workers(pool))


def run(ctx: Context, sections: dict[str, Section]) -> None:
    section = sections["prefect"]
    if ctx.prefect_venv is None:
        section.skipped = ctx.prefect_missing
        return
    contenders = [
        Contender("prefect", "Prefect worker (defaults)", start_prefect_worker(None)),
        Contender("flowagent", "flowagent agent", start_our_agent),
    ]
    if not ctx.quick:
        contenders.insert(
            1,
            Contender("prefect_1s", "Prefect worker (1 s query)", start_prefect_worker(1), False),
        )
    results: dict[str, dict[str, Any]] = {}
    with ctx.lab.prefect_server(ctx.prefect_venv) as server:
        for contender in contenders:
            ctx.say(f"prefect: {contender.label}")
            results[contender.key] = measure(ctx, server, contender)
    section.details.update(results)
    fill(section, contenders, results)


def measure(ctx: Context, server: PrefectServer, contender: Contender) -> dict[str, Any]:
    n = ctx.sizes.prefect_runs
    api = PrefectApi(server.url)
    pool, queue = api.pool_and_queue()
    out = ctx.lab.path(f"prefect-{contender.key}-stamps")
    home = ctx.lab.path(f"prefect-{contender.key}-home")
    deployment = api.deployment(pool, queue["name"], "bench.py:first_act", out=str(out))
    # Runs arrive every 3-5 s (--quick: 1.1-1.9 s): each one's engine (`python -m prefect.engine`)
    # takes 1.3 s of CPU just to import Prefect, so closer arrivals would measure a saturated
    # 2-core machine rather than the worker.
    gap = (0.75 * ctx.sizes.prefect_gap, 1.25 * ctx.sizes.prefect_gap)
    proc = contender.start(ctx.lab, server, pool, queue, home)
    try:
        warm = stream(lambda due: api.run(deployment, at=due), 1, gap)
        if collect_stamps(out, warm, timeout=120):
            raise LabError(f"{contender.label}: the warm-up run never started")
        pickup = stream(lambda due: api.run(deployment, at=due), n, gap)
        ontime = stream(lambda due: api.run(deployment, at=due), n, gap, LEAD)
        missing = collect_stamps(out, pickup + ontime, timeout=120)
        ids = [s["run_id"] for s in warm + pickup + ontime]
        states = _wait_terminal(api, ids, timeout=120)
        for sample in pickup + ontime:
            for state in api.states(sample["run_id"]):
                key = state["type"].lower()
                if key in ("pending", "running") and key not in sample:
                    sample[key] = parse_ts(state["timestamp"])
        result: dict[str, Any] = {
            "pool": pool,
            "pickup": pickup,
            "ontime": ontime,
            "never_started": missing,
            "states": {s: list(states.values()).count(s) for s in set(states.values())},
        }
        if contender.footprint:
            time.sleep(2.0)
            window = ctx.sizes.idle_seconds
            ctx.say(f"prefect: {contender.label} idle for {window:g}s")
            with ProcessWatch(proc.pid, children=True) as watch:
                time.sleep(window)
            usage = watch.stop()
            result["idle"] = {
                "rss_mib": usage.rss,
                "rss_with_children_mib": usage.rss_with_children,
                "children": usage.children,
                "cpu_seconds": usage.cpu_seconds,
                "cpu_percent": usage.cpu_percent,
                "children_cpu_seconds": usage.children_cpu_seconds,
                "cpu_percent_with_children": usage.cpu_percent_with_children,
                "window_seconds": usage.seconds,
            }
        return result
    finally:
        ctx.lab.stop(proc)
        api.close()


def _wait_terminal(api: PrefectApi, ids: list[str], timeout: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        states = api.run_states(ids)
        if all(states.get(i) in TERMINAL for i in ids) or time.monotonic() > deadline:
            return states
        time.sleep(0.5)


def fill(section: Section, contenders: list[Contender], results: dict[str, dict[str, Any]]) -> None:
    def note(key: str) -> str:
        r = results[key]
        bad = {s: c for s, c in r["states"].items() if s != "COMPLETED"}
        parts = [f"{len(r['never_started'])} never started"] if r["never_started"] else []
        parts += [f"{s} {c}" for s, c in bad.items()]
        return "; ".join(parts)

    phases = (
        ("created → claimed", "created", "pending"),
        ("claimed → first act", "pending", "first_act"),
    )
    for c in contenders:
        samples = results[c.key]["pickup"]
        section.add(
            Figure.distribution(
                "prefect",
                f"{c.label}: pickup",
                "ms",
                late_ms(samples, since="created"),
                note=note(c.key),
            )
        )
        for what, start, end in phases:
            section.add(
                Figure.distribution(
                    "prefect",
                    f"  {what}",
                    "ms",
                    [(s[end] - s[start]) * 1000 for s in samples if start in s and end in s],
                )
            )
    for c in contenders:
        section.add(
            Figure.distribution(
                "prefect", f"{c.label}: late start", "ms", late_ms(results[c.key]["ontime"])
            )
        )
    for c in contenders:
        if idle := results[c.key].get("idle"):
            section.add(
                Figure.distribution("prefect", f"{c.label}: idle RSS", "MiB", idle["rss_mib"])
            )
            section.add(
                Figure.distribution(
                    "prefect",
                    f"{c.label}: idle RSS with children",
                    "MiB",
                    idle["rss_with_children_mib"],
                    note=f"children: {max(idle['children'], default=0)}",
                )
            )
            section.add(
                Figure.scalar(
                    "prefect",
                    f"{c.label}: idle CPU over {idle['window_seconds']:.0f} s",
                    "%",
                    idle["cpu_percent"],
                )
            )
    ours, theirs = results["flowagent"], results["prefect"]
    ratios = [
        ("pickup p50", _ratio(theirs["pickup"], ours["pickup"], 50, "created")),
        ("pickup p95", _ratio(theirs["pickup"], ours["pickup"], 95, "created")),
        ("late start p50", _ratio(theirs["ontime"], ours["ontime"], 50, "due")),
        ("late start p95", _ratio(theirs["ontime"], ours["ontime"], 95, "due")),
    ]
    if "idle" in ours and "idle" in theirs:
        ratios.append(("idle RSS", max(theirs["idle"]["rss_mib"]) / max(ours["idle"]["rss_mib"])))
        ratios.append(
            (
                "idle RSS with children",
                max(theirs["idle"]["rss_with_children_mib"])
                / max(ours["idle"]["rss_with_children_mib"]),
            )
        )
        cpu = ours["idle"]["cpu_percent"]
        ratios.append(("idle CPU", theirs["idle"]["cpu_percent"] / cpu if cpu else None))
    for what, value in ratios:
        section.add(
            Figure.scalar("prefect", f"ratio Prefect worker / flowagent: {what}", "x", value)
        )


def _ratio(
    theirs: list[dict[str, Any]], ours: list[dict[str, Any]], q: float, since: str
) -> float | None:
    a, b = late_ms(theirs, since), late_ms(ours, since)
    if not a or not b:
        return None
    mine = percentile(b, q)
    return percentile(a, q) / mine if mine > 0 else None
