"""Host metrics from psutil, sent with every heartbeat."""

from __future__ import annotations

import os

import psutil

from agent.models import HostMetrics


def host_metrics() -> HostMetrics:
    """A cheap, non-blocking snapshot (cpu_percent compares with the previous call)."""
    memory = psutil.virtual_memory()
    try:
        load_1m: float | None = os.getloadavg()[0]
    except OSError:  # not every platform has a load average
        load_1m = None
    return HostMetrics(
        cpu_percent=psutil.cpu_percent(interval=None),
        memory_percent=memory.percent,
        load_1m=load_1m,
        memory_available_bytes=memory.available,
    )
