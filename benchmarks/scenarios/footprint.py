"""(6) Footprint: an idle agent and an idle server, RSS and CPU over a window.

A fresh server, one agent at its defaults (subprocess runner) that has run one flow (so its
runner is loaded, as it would be in service), then nothing: RSS sampled every second, CPU from
each process's own cpu_times over the whole window. The agent's figures are for its own process;
"with its children" adds its fence process (agent/fence.py), which every agent starts.
"""

from __future__ import annotations

import time

from benchmarks.api import NativeApi
from benchmarks.core import Context, Section
from benchmarks.sampling import ProcessWatch, Usage
from benchmarks.scenarios.pickup import one_run
from benchmarks.stats import Figure, Target

SETTLE_SECONDS = 2.0


def run(ctx: Context, sections: dict[str, Section]) -> None:
    section = sections["footprint"]
    out = ctx.lab.path("footprint-stamps")
    window = ctx.sizes.idle_seconds
    with ctx.lab.native_server("footprint-server") as server:
        api = NativeApi(server.url)
        queue = api.queue()
        deployment = api.deployment(queue["id"], "bench.py:first_act", out=str(out))
        agent = ctx.lab.agent(server.url, queue["id"], name="footprint-agent")
        one_run(api, deployment, out)
        api.close()
        time.sleep(SETTLE_SECONDS)
        ctx.say(f"footprint: idle agent and server for {window:g}s")
        with (
            ProcessWatch(agent.pid, children=True) as agent_watch,
            ProcessWatch(server.proc.pid) as server_watch,
        ):
            time.sleep(window)
        add_usage(section, "agent", agent_watch.stop(), targets=True)
        add_usage(section, "server", server_watch.stop())


def add_usage(section: Section, who: str, usage: Usage, *, targets: bool = False) -> None:
    section.add(
        Figure.distribution(
            section.name,
            f"idle {who} RSS",
            "MiB",
            usage.rss,
            [Target("max", "<=", 40)] if targets else [],
            note="sampled every second",
        )
    )
    section.add(
        Figure.scalar(
            section.name,
            f"idle {who} CPU over {usage.seconds:.0f} s",
            "%",
            usage.cpu_percent,
            [Target("value", "<=", 0.5)] if targets else [],
            note=f"{usage.cpu_seconds:.2f} CPU s",
        )
    )
    if usage.rss_with_children:
        section.add(
            Figure.distribution(
                section.name,
                f"idle {who} RSS with its children",
                "MiB",
                usage.rss_with_children,
                note=f"{max(usage.children)} child: the fence process (agent/fence.py)",
            )
        )
        section.add(
            Figure.scalar(
                section.name,
                f"idle {who} CPU with its children",
                "%",
                usage.cpu_percent_with_children,
            )
        )
    section.details[who] = {
        "rss_mib": usage.rss,
        "rss_with_children_mib": usage.rss_with_children,
        "children": usage.children,
        "cpu_seconds": usage.cpu_seconds,
        "children_cpu_seconds": usage.children_cpu_seconds,
        "window_seconds": usage.seconds,
    }
