"""The agent's Prometheus metrics: one registry per agent (no global state), served on /metrics.

Counters are incremented where things happen (the claim loop, the run supervisor); gauges and
the heartbeat-failure count are read when scraped, from callbacks the daemon binds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from agent.models import HostMetrics

PREFIX = "flowagent_agent"
# From a claim to the run's process existing: mostly the RUNNING report and the runner's start.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class _CallbackCounter(Collector):
    """A counter whose total lives elsewhere (e.g. ``Heartbeater.failures``)."""

    def __init__(self, name: str, documentation: str) -> None:
        self.name = name
        self.documentation = documentation
        self.read: Callable[[], float] = lambda: 0.0

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self.name, self.documentation, value=self.read())

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self.name, self.documentation)


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.runs_claimed = Counter(
            f"{PREFIX}_runs_claimed", "Flow runs claimed, by work queue.", ["queue"], registry=r
        )
        self.runs_started = Counter(
            f"{PREFIX}_runs_started",
            "Flow runs whose process (or container, or task) was started.",
            ["runner"],
            registry=r,
        )
        self.runs_finished = Counter(
            f"{PREFIX}_runs_finished",
            "Flow runs this agent reported in a terminal state.",
            ["state", "runner"],
            registry=r,
        )
        self.claim_to_start = Histogram(
            f"{PREFIX}_claim_to_start_seconds",
            "Seconds from claiming a run to its process being started.",
            ["runner"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.heartbeat_failures = _CallbackCounter(
            f"{PREFIX}_heartbeat_failures", "Heartbeats the server did not receive."
        )
        r.register(self.heartbeat_failures)
        self.runs_in_flight = Gauge(
            f"{PREFIX}_runs_in_flight", "Flow runs being supervised now.", registry=r
        )
        self.reports_spooled = Gauge(
            f"{PREFIX}_reports_spooled",
            "State reports and log batches waiting on disk for the server.",
            registry=r,
        )
        self.claiming_paused = Gauge(
            f"{PREFIX}_claiming_paused",
            "1 while a resource threshold stops this agent from claiming.",
            registry=r,
        )
        self.host_cpu_percent = Gauge(
            f"{PREFIX}_host_cpu_percent", "Host CPU use, percent.", registry=r
        )
        self.host_memory_percent = Gauge(
            f"{PREFIX}_host_memory_percent", "Host memory in use, percent.", registry=r
        )
        self.host_memory_available_bytes = Gauge(
            f"{PREFIX}_host_memory_available_bytes", "Host memory available, bytes.", registry=r
        )
        self.host_load1 = Gauge(
            f"{PREFIX}_host_load1", "Host 1-minute load average (NaN if unknown).", registry=r
        )

    def bind(
        self,
        *,
        runs_in_flight: Callable[[], int],
        spooled: Callable[[], int],
        paused: Callable[[], bool],
        host: Callable[[], HostMetrics],
    ) -> None:
        """Gauges read at scrape time."""
        self.runs_in_flight.set_function(runs_in_flight)
        self.reports_spooled.set_function(spooled)
        self.claiming_paused.set_function(lambda: float(paused()))
        self.host_cpu_percent.set_function(lambda: host().cpu_percent)
        self.host_memory_percent.set_function(lambda: host().memory_percent)
        self.host_memory_available_bytes.set_function(
            lambda: _or_nan(host().memory_available_bytes)
        )
        self.host_load1.set_function(lambda: _or_nan(host().load_1m))

    def bind_heartbeat_failures(self, read: Callable[[], int]) -> None:
        self.heartbeat_failures.read = lambda: float(read())

    def run_started(self, runner: str, claim_to_start_seconds: float) -> None:
        self.runs_started.labels(runner=runner).inc()
        self.claim_to_start.labels(runner=runner).observe(claim_to_start_seconds)

    def run_finished(self, state: str, runner: str) -> None:
        self.runs_finished.labels(state=state, runner=runner).inc()

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric."""
        return generate_latest(self.registry)
