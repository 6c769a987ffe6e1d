"""(2) On-time start: runs scheduled 1-2 s ahead; how late did each flow's first act come?

One agent (subprocess runner, defaults) on the embedded server. A run is created every 0.2-0.3 s,
each due 1-2 s after its creation, so several wait at once and their times interleave. Lateness
is the flow's first-act timestamp minus the run's expected start time (negative: too early).
"""

from __future__ import annotations

from benchmarks.api import NativeApi, parse_ts
from benchmarks.core import Context, Section
from benchmarks.scenarios.common import collect_stamps, late_ms, stream
from benchmarks.scenarios.pickup import one_run
from benchmarks.stats import Figure, Target

GAP = (0.2, 0.3)
LEAD = (1.0, 2.0)


def run(ctx: Context, sections: dict[str, Section]) -> None:
    section = sections["ontime"]
    n = ctx.sizes.ontime_runs
    out = ctx.lab.path("ontime-stamps")
    with ctx.lab.native_server("ontime-server") as server:
        api = NativeApi(server.url)
        queue = api.queue()
        deployment = api.deployment(queue["id"], "bench.py:first_act", out=str(out))
        ctx.lab.agent(server.url, queue["id"], name="ontime-agent")
        one_run(api, deployment, out)  # warm-up
        ctx.say(f"ontime: {n} runs, each due 1-2 s after it is created")
        samples = stream(lambda due: api.run(deployment, at=due), n, GAP, LEAD)
        missing = collect_stamps(out, samples, timeout=60)
        for sample in samples:
            for state in api.states(sample["run_id"]):
                if state["type"] in ("PENDING", "RUNNING"):
                    sample[state["type"].lower()] = parse_ts(state["timestamp"])
        api.close()
    late = late_ms(samples)
    section.add(
        Figure.distribution(
            "ontime",
            "due → flow's first act (late by)",
            "ms",
            late,
            [Target("p99", "<=", 50)],
            note=f"{len(missing)} never started" if missing else "",
        )
    )
    section.add(
        Figure.distribution(
            "ontime",
            "  due → claimed (PENDING)",
            "ms",
            [(s["pending"] - s["due"]) * 1000 for s in samples if "pending" in s],
        )
    )
    section.add(
        Figure.distribution(
            "ontime",
            "  claimed → flow's first act",
            "ms",
            [(s["first_act"] - s["pending"]) * 1000 for s in samples if "first_act" in s],
        )
    )
    section.details["earliest_ms"] = min(late) if late else None
    section.details["never_started"] = missing
    section.details["samples"] = samples
