"""(9) Pickup with several queues per agent: does a run in the last queue wait longer?

Two idle agents on one embedded server: one serving a single queue, one serving three queues in
priority order. Ad-hoc runs are created one at a time, in turn in the single queue, the
three-queue agent's first queue and its last, each after the previous one completed and a short
random pause (so both agents sit in their long polls). Pickup is, as in (1), the time from just
before the POST that creates the run to the flow's first act; the three series, taken under the
same load, should match: one claim request covers every queue and its long poll wakes for any.
"""

from __future__ import annotations

import random
import time

from benchmarks.api import NativeApi
from benchmarks.core import Context, Section, ms
from benchmarks.scenarios.pickup import WARM_UP, one_run
from benchmarks.stats import Figure, Target, percentile


def run(ctx: Context, sections: dict[str, Section]) -> None:
    section = sections["queues"]
    n = ctx.sizes.pickup_runs
    out = ctx.lab.path("queues-stamps")
    with ctx.lab.native_server("queues-server") as server:
        api = NativeApi(server.url)
        single = api.queue()
        first, middle, last = api.queue(), api.queue(), api.queue()
        deployments = {
            "one queue": api.deployment(single["id"], "bench.py:first_act", out=str(out)),
            "3 queues: the first": api.deployment(first["id"], "bench.py:first_act", out=str(out)),
            "3 queues: the last": api.deployment(last["id"], "bench.py:first_act", out=str(out)),
        }
        ctx.lab.agent(server.url, single["id"], name="queues-single")
        ctx.lab.agent(server.url, first["id"], middle["id"], last["id"], name="queues-three")
        for deployment in deployments.values():
            for _ in range(WARM_UP):
                one_run(api, deployment, out)
        ctx.say(f"queues: {n} ad-hoc runs per series, in turn, one at a time")
        picked: dict[str, list[float]] = {label: [] for label in deployments}
        for _ in range(n):
            for label, deployment in deployments.items():
                time.sleep(random.uniform(0.1, 0.3))  # both agents back in their long polls
                sample = one_run(api, deployment, out)
                picked[label].append(ms(sample["first_act"] - sample["created"]))
        api.close()

    for label, values in picked.items():
        section.add(
            Figure.distribution(
                "queues",
                f"pickup, {label}",
                "ms",
                values,
                [Target("p50", "<=", 50), Target("p99", "<=", 250)],
            )
        )
    if all(picked.values()):
        section.add(
            Figure.scalar(
                "queues",
                "ratio last queue / one queue (p50)",
                "x",
                percentile(picked["3 queues: the last"], 50) / percentile(picked["one queue"], 50),
                [Target("value", "<=", 1.25)],
            )
        )
