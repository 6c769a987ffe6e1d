"""(5) Concurrency: many sleeping subprocess runs in one agent (``--limit`` as many).

The runs are created on a paused queue; one agent with ``--limit N`` waits; the clock starts when
the queue is resumed. Each run is a Python flow that stamps its start and then sleeps until the
harness creates a release file, so all of them are alive at once. Measured:

* time until the server has every run RUNNING, and until every flow has made its first act;
* heartbeats: the server's ``last_heartbeat`` of the agent, polled every 0.25 s from the resume
  until every run is over; a beat's delay is its gap to the previous one minus the interval;
* the agent's RSS (its own process, and with all its descendants) every second;
* time from the release until every run is COMPLETED.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from typing import Any

import httpx

from benchmarks.api import UNFINISHED, NativeApi, create_many, parse_ts
from benchmarks.core import Context, Section
from benchmarks.sampling import ProcessWatch, read_stamps, request_durations, run_counts
from benchmarks.scenarios.common import wait_until
from benchmarks.stats import Figure, Target


class HeartbeatWatch:
    """Polls GET /api/agents on a thread and keeps every distinct last_heartbeat of one agent."""

    def __init__(self, url: str, name: str, interval: float = 0.25) -> None:
        self.url = url
        self.name = name
        self.interval = interval
        self.beats: list[float] = []
        # The watcher's own longest wait between two answers: a beat can only be missed (two
        # of them seen as one long gap) while the server takes longer than an interval to answer.
        self.longest_wait = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="heartbeats", daemon=True)

    def __enter__(self) -> HeartbeatWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        with httpx.Client(base_url=self.url + "/", timeout=30) as http:
            answered = time.monotonic()
            while not self._stop.wait(self.interval):
                try:
                    agents = http.get("agents").json()
                except (httpx.HTTPError, ValueError):
                    continue
                now = time.monotonic()
                self.longest_wait = max(self.longest_wait, now - answered)
                answered = now
                for agent in agents:
                    if agent["name"] == self.name:
                        beat = parse_ts(agent["last_heartbeat"])
                        if not self.beats or beat != self.beats[-1]:
                            self.beats.append(beat)

    def delays(self, interval: float, until: float) -> list[float]:
        """Seconds each beat came later than ``interval`` after the one before; a silence from
        the last beat to ``until`` (the end of the watch) counts as one more late beat."""
        beats = self.beats
        delays = [b - a - interval for a, b in itertools.pairwise(beats)]
        if beats and until - beats[-1] > interval:
            delays.append(until - beats[-1] - interval)
        return delays


def run(ctx: Context, sections: dict[str, Section]) -> None:
    section = sections["concurrency"]
    n = ctx.sizes.concurrent_runs
    out = ctx.lab.path("concurrency-stamps")
    release = ctx.lab.root / "concurrency-release"
    with ctx.lab.native_server("concurrency-server") as server:
        api = NativeApi(server.url)
        queue = api.queue(paused=True)
        deployment = api.deployment(
            queue["id"], "bench.py:hold", out=str(out), release=str(release)
        )
        create_many(api, deployment, [{} for _ in range(n)])
        name = "concurrency-agent"
        interval = ctx.sizes.heartbeat_seconds
        agent = ctx.lab.agent(
            server.url,
            queue["id"],
            "--limit",
            str(n),
            name=name,
            env={"AGENT_HEARTBEAT_SECONDS": str(interval)},
        )
        ctx.say(f"concurrency: {n} sleeping subprocess runs in one agent (--limit {n})")
        result: dict[str, Any] = {"n": n}
        with (
            httpx.Client(timeout=60) as http,
            HeartbeatWatch(server.url, name) as beats,
            ProcessWatch(agent.pid, interval=1.0, children=True) as watch,
        ):
            t0 = time.time()
            api.pause(queue["id"], False)
            timeout = 120 + n / 2
            all_running = wait_until(
                lambda: not api.any_in(queue["id"], "SCHEDULED", "PENDING"),
                timeout,
                f"{n} runs RUNNING",
                interval=0.1,
            )
            all_started = wait_until(
                lambda: len(os.listdir(out)) >= n, timeout, f"{n} flows started", interval=0.2
            )
            running = api.runs(queue["id"], "RUNNING")
            ctx.say(f"concurrency: all running; holding {ctx.sizes.hold_seconds:g}s")
            hold_from = len(watch.usage.rss)
            time.sleep(ctx.sizes.hold_seconds)
            held_rss = list(watch.usage.rss[hold_from:])
            released = time.time()
            release.touch()
            done = wait_until(
                lambda: not api.any_in(queue["id"], *UNFINISHED),
                timeout,
                f"{n} runs COMPLETED",
                interval=0.1,
            )
            watched_until = time.time()
            counts = run_counts(http, server.url)
            heartbeat_latency = request_durations(http, server.url, "POST /api/agents/heartbeat")
        usage = watch.usage
        api.close()
    stamps = read_stamps(out)
    delays = beats.delays(interval, watched_until)
    running_at = [parse_ts(r["state"]["timestamp"]) for r in running]
    result |= {
        "resume_to_all_running_s": all_running - t0,
        "resume_to_last_running_recorded_s": max(running_at) - t0 if running_at else None,
        "resume_to_all_started_s": all_started - t0,
        "resume_to_last_first_act_s": max(stamps.values()) - t0 if stamps else None,
        "release_to_all_completed_s": done - released,
        "states": {k: v for k, v in counts.items() if v},
        "heartbeats": beats.beats,
        "heartbeat_watch_longest_wait_s": beats.longest_wait,
        "heartbeat_request_latency": heartbeat_latency,
        "rss_mib": usage.rss,
        "rss_with_children_mib": usage.rss_with_children,
        "children": usage.children,
        "agent_cpu_seconds": usage.cpu_seconds,
        "window_seconds": usage.seconds,
    }
    section.details.update(result)
    last_running = result["resume_to_last_running_recorded_s"]
    section.add(
        Figure.scalar(
            "concurrency",
            f"resume → all {n} RUNNING (server)",
            "s",
            last_running,
            n=n,
        )
    )
    section.add(
        Figure.scalar(
            "concurrency",
            f"resume → all {n} flows' first act",
            "s",
            result["resume_to_last_first_act_s"],
            n=len(stamps),
        )
    )
    section.add(
        Figure.distribution(
            "concurrency",
            "resume → flow's first act, each run",
            "s",
            [s - t0 for s in stamps.values()],
        )
    )
    section.add(
        Figure.distribution(
            "concurrency",
            f"heartbeat delay (gap - {interval:g} s)",
            "s",
            delays,
            [Target("max", "<=", interval)],
            note=f"{sum(d >= interval for d in delays)} of {len(delays)} gaps a whole interval "
            f"late; server-side last_heartbeat, polled (longest wait for an answer "
            f"{beats.longest_wait:.1f} s); the server answered "
            f"{heartbeat_latency.get('count', 0):.0f} heartbeats in "
            f"{1000 * heartbeat_latency.get('mean_seconds', 0):.0f} ms on average",
        )
    )
    section.add(
        Figure.distribution(
            "concurrency",
            f"agent RSS, own process, {n} running",
            "MiB",
            held_rss,
            note=f"max over the whole scenario {max(usage.rss):.1f} MiB",
        )
    )
    section.add(
        Figure.scalar(
            "concurrency",
            "agent RSS with its children, max",
            "MiB",
            max(usage.rss_with_children) if usage.rss_with_children else None,
            n=max(usage.children) if usage.children else None,
        )
    )
    section.add(
        Figure.scalar(
            "concurrency",
            f"agent CPU over the scenario ({usage.seconds:.0f} s)",
            "%",
            usage.cpu_percent,
        )
    )
    section.add(
        Figure.scalar(
            "concurrency", "release → all COMPLETED", "s", result["release_to_all_completed_s"]
        )
    )
    section.add(
        Figure.scalar(
            "concurrency",
            "runs COMPLETED",
            "runs",
            counts.get("COMPLETED", 0),
            [Target("value", ">=", n)],
            n=n,
            note=", ".join(f"{k} {v}" for k, v in counts.items() if v and k != "COMPLETED"),
        )
    )
