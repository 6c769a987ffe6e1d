"""(8) Output: one run prints far more than the agent may hold (issue 12, item 5).

A fresh server, one agent at its defaults, one command run that prints ``output_mb`` MB of
numbered 1,000-byte lines as fast as it can. The agent's RSS is sampled every 0.1 s while the run
goes on and once more after it ends; throughput is the output's size over the time from the run's
RUNNING to its COMPLETED (the agent ships every line before it reports the end). Every line is
then read back from the server and counted: the figure that matters is that all arrived.
"""

from __future__ import annotations

import time

from benchmarks.api import NativeApi, parse_ts
from benchmarks.core import Context, Section
from benchmarks.sampling import ProcessWatch
from benchmarks.stats import Figure, Target

WIDTH = 1000
PRINTER = """
import sys
out = sys.stdout
for i in range({lines}):
    out.write(f"{{i:09d}} " + "x" * {pad} + "\\n")
"""


def run(ctx: Context, sections: dict[str, Section]) -> None:
    section = sections["output"]
    lines = ctx.sizes.output_mb * 1_000_000 // WIDTH
    with ctx.lab.native_server("output-server") as server:
        api = NativeApi(server.url)
        queue = api.queue()
        command = ["python3", "-c", PRINTER.format(lines=lines, pad=WIDTH - 11)]
        deployment = api.deployment(queue["id"], command=command)
        agent = ctx.lab.agent(server.url, queue["id"], name="output-agent")
        ctx.say(f"output: one run printing {ctx.sizes.output_mb} MB")
        with ProcessWatch(agent.pid, interval=0.1) as watch:
            idle = watch.process.memory_info().rss / 2**20
            run_id = api.run(deployment)
            while (state := api.call("GET", f"flow_runs/{run_id}")["state"]["type"]) not in (
                "COMPLETED",
                "FAILED",
                "CRASHED",
            ):
                time.sleep(0.2)
        usage = watch.stop()
        time.sleep(2.0)
        after = watch.process.memory_info().rss / 2**20
        states = {s["type"]: s["timestamp"] for s in api.states(run_id)}
        delivered, last = 0, 0
        while page := api.call(
            "GET", f"flow_runs/{run_id}/logs", params={"after": last, "limit": 10000}
        ):
            delivered += sum(1 for line in page if line["stream"] == "stdout")
            last = page[-1]["id"]
        api.close()
    seconds = _seconds(states.get("RUNNING"), states.get("COMPLETED"))
    section.add(
        Figure.scalar(
            section.name,
            f"agent RSS, peak while a run prints {ctx.sizes.output_mb} MB",
            "MiB",
            max(usage.rss),
            [Target("value", "<=", 150)],
            note=f"idle before {idle:.0f} MiB, sampled every 0.1 s",
        )
    )
    section.add(Figure.scalar(section.name, "agent RSS 2 s after the run", "MiB", after))
    section.add(
        Figure.scalar(
            section.name,
            "lines on the server / printed",
            "%",
            100.0 * delivered / lines,
            [Target("value", ">=", 100)],
            n=lines,
            note=f"run ended {state}",
        )
    )
    section.add(
        Figure.scalar(
            section.name,
            "output throughput, RUNNING to COMPLETED",
            "MB/s",
            None if seconds is None else ctx.sizes.output_mb / seconds,
            note="bound by the server storing the lines",
        )
    )
    section.details = {"rss_mib": usage.rss, "lines": lines, "delivered": delivered}


def _seconds(start: str | None, end: str | None) -> float | None:
    if start is None or end is None:
        return None
    return parse_ts(end) - parse_ts(start)
