"""Resource-aware claiming: stop taking runs while the host is busy, take them again after.

Thresholds (settings ``max_cpu_percent``, ``min_free_memory``, ``max_load``; all off by default)
are checked before every claim. While one is crossed the agent does not claim, and says why
once (``claiming_paused``), not at every poll; once all are clear again it says
``claiming_resumed`` and claims. Runs already claimed go on untouched.

Host readings come from one :class:`HostSampler`, shared with heartbeats and ``/metrics``:
psutil's ``cpu_percent`` measures since its previous call, so several independent callers
would each see a shorter, noisier window.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from agent.config import Settings
from agent.models import HostMetrics
from agent.resources import host_metrics

log = structlog.get_logger("agent.throttle")


def human_bytes(count: float) -> str:
    for unit in ("B", "K", "M", "G"):
        if count < 1024:
            return f"{count:.0f}{unit}" if unit == "B" else f"{count:.1f}{unit}"
        count /= 1024
    return f"{count:.1f}T"


@dataclass(frozen=True)
class Thresholds:
    max_cpu_percent: float | None = None
    min_free_memory: int | None = None  # bytes
    max_load: float | None = None  # 1-minute load average, not divided by the CPU count

    @classmethod
    def from_settings(cls, settings: Settings) -> Thresholds:
        return cls(settings.max_cpu_percent, settings.min_free_memory, settings.max_load)

    @property
    def active(self) -> bool:
        return any(
            v is not None for v in (self.max_cpu_percent, self.min_free_memory, self.max_load)
        )

    def exceeded(self, host: HostMetrics) -> str | None:
        """Why the host is too busy to claim, or None when it is not."""
        reasons = []
        if self.max_cpu_percent is not None and host.cpu_percent > self.max_cpu_percent:
            reasons.append(f"cpu {host.cpu_percent:.0f}% > {self.max_cpu_percent:g}%")
        free = host.memory_available_bytes
        if self.min_free_memory is not None and free is not None and free < self.min_free_memory:
            reasons.append(f"free memory {human_bytes(free)} < {human_bytes(self.min_free_memory)}")
        load = host.load_1m
        if self.max_load is not None and load is not None and load > self.max_load:
            reasons.append(f"load {load:.2f} > {self.max_load:g}")
        return "; ".join(reasons) or None


class HostSampler:
    """The latest host reading, taken at most every ``min_interval`` seconds.

    Called from the event loop (claims, heartbeats) and from the health server's thread
    (``/metrics``), hence the lock.
    """

    def __init__(
        self,
        sample: Callable[[], HostMetrics] = host_metrics,
        *,
        min_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sample = sample
        self._min_interval = min_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._latest: HostMetrics | None = None
        self._taken = 0.0

    def latest(self) -> HostMetrics:
        with self._lock:
            now = self._clock()
            if self._latest is None or now - self._taken >= self._min_interval:
                self._latest = self._sample()
                self._taken = now
            return self._latest


class ClaimGate:
    """Open while the host is within the thresholds; logs each change of state once."""

    def __init__(
        self, thresholds: Thresholds, sampler: HostSampler, *, recheck_seconds: float = 2.0
    ) -> None:
        self.thresholds = thresholds
        self.sampler = sampler
        self.recheck_seconds = recheck_seconds
        self.paused_reason: str | None = None

    def check(self) -> str | None:
        """Read the host; returns why claiming is paused, or None when it may go on."""
        if not self.thresholds.active:
            return None
        reason = self.thresholds.exceeded(self.sampler.latest())
        if reason is not None and self.paused_reason is None:
            log.warning("claiming_paused", reason=reason)
        elif reason is None and self.paused_reason is not None:
            log.info("claiming_resumed", was=self.paused_reason)
        self.paused_reason = reason
        return reason

    async def wait_open(self) -> None:
        """Return once the host is within every threshold (rechecked every few seconds)."""
        while True:
            if self.check() is None:
                return
            # Polled, not awaited on an event: nothing signals when the host gets quieter.
            await asyncio.sleep(self.recheck_seconds)
