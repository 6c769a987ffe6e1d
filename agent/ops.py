"""What running in production adds around the claim loop, behind one object the daemon calls.

:class:`Operations` holds the systemd notifier (:mod:`agent.notify`), the health monitor and its
HTTP server (:mod:`agent.health`), the Prometheus metrics (:mod:`agent.metrics`), the
resource gate on claiming (:mod:`agent.throttle`) and the secret redactor
(:mod:`agent.redaction`). The daemon calls it at a handful of points: ``ready`` once the queue
is resolved, ``monitor`` as a side task, ``stopping`` on the first signal, ``close`` last.
"""

from __future__ import annotations

import os
from collections.abc import Callable, MutableMapping, Sequence
from typing import Any

from agent.config import Settings, settings_redactor
from agent.health import HealthMonitor, HealthServer
from agent.heartbeat import Heartbeater
from agent.metrics import AgentMetrics
from agent.models import WorkQueue
from agent.notify import SystemdNotifier
from agent.throttle import ClaimGate, HostSampler, Thresholds

__all__ = ["Operations", "settings_redactor"]


class Operations:
    def __init__(
        self,
        settings: Settings,
        *,
        runs_in_flight: Callable[[], int],
        spooled: Callable[[], int],
        stopping: Callable[[], bool],
        env: MutableMapping[str, str] | None = None,
    ) -> None:
        env = os.environ if env is None else env
        self.settings = settings
        self._runs_in_flight = runs_in_flight
        self._stopping = stopping
        self.notifier = SystemdNotifier.from_env(env)
        self.redactor = settings_redactor(settings, env)
        self.sampler = HostSampler()
        self.gate = ClaimGate(Thresholds.from_settings(settings), self.sampler)
        self.metrics = AgentMetrics()
        self.metrics.bind(
            runs_in_flight=runs_in_flight,
            spooled=spooled,
            paused=lambda: self.gate.paused_reason is not None,
            host=self.sampler.latest,
        )
        watchdog = self.notifier.watchdog_seconds
        self.monitor = HealthMonitor(
            # systemd wants a ping well within WatchdogSec; a tick is cheap, so be generous.
            tick_seconds=min(1.0, watchdog / 3) if watchdog else 1.0,
            api_stale_after=3 * settings.heartbeat_seconds,
        )
        self._server: HealthServer | None = None
        self._heartbeater: Heartbeater | None = None

    def ready(self, queues: Sequence[WorkQueue], heartbeater: Heartbeater) -> None:
        """The queues are resolved and the agent registered: serve health, tell systemd."""
        self._heartbeater = heartbeater
        self.monitor.attach_api(heartbeater.since_renewed)
        self.metrics.bind_heartbeat_failures(lambda: heartbeater.failures)
        if self.settings.health_port is not None:
            self._server = HealthServer(
                self.settings.health_host,
                self.settings.health_port,
                self.monitor,
                self.metrics.exposition,
            )
            self._server.start()
        names = ", ".join(queue.name for queue in queues)
        self.notifier.ready(f"polling work queue {names}; " + self.status())

    def supervise(self, side_tasks: Sequence[Any]) -> None:
        self.monitor.supervise(side_tasks)

    async def monitor_task(self) -> None:
        await self.monitor.run(self.notifier, self.status)

    def status(self) -> str:
        """systemd's STATUS=: runs, API reachability, and why claiming is paused, if it is."""
        runs = self._runs_in_flight()
        parts = [f"{runs}/{self.settings.limit} runs"]
        problem = self.monitor.api_problem()
        parts.append("API reachable" if problem is None else problem)
        if self._stopping():
            parts.insert(0, "draining")
        elif self.gate.paused_reason is not None:
            parts.append(f"claiming paused: {self.gate.paused_reason}")
        return "; ".join(parts)

    def stopping(self) -> None:
        self.notifier.stopping(f"draining {self._runs_in_flight()} runs")

    def close(self) -> None:
        self.monitor.stopped()
        self.stopping()
        if self._server is not None:
            self._server.close()
        self.notifier.close()
