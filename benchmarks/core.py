"""What every scenario gets (:class:`Context`) and gives back (:class:`Section`)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.lab import Lab
from benchmarks.stats import Figure


@dataclass(frozen=True)
class Sizes:
    """How much each scenario does; ``--quick`` shrinks everything to CI size."""

    pickup_runs: int = 100
    ontime_runs: int = 60
    floor_samples: int = 100
    inprocess_runs: int = 3000
    inprocess_limit: int = 100
    subprocess_runs: int = 200
    subprocess_limit: int = 16
    burst_runs: int = 1000
    concurrent_runs: int = 1000
    hold_seconds: float = 30.0
    heartbeat_seconds: float = 5.0  # the concurrency scenario's agent (5 s is the default)
    idle_seconds: float = 60.0
    prefect_runs: int = 12
    prefect_gap: float = 4.0  # mean seconds between two Prefect runs' creation (+-25 %)
    output_mb: int = 200  # what one run prints in the output scenario
    fleet_agents: str = "100,300,1000"  # simulated agents held at once, one size after another
    fleet_hold_seconds: float = 20.0
    fleet_heartbeat_seconds: float = 5.0
    fleet_claim_wait: float = 10.0  # a simulated agent's long poll (a real agent's default)
    fleet_runs: int = 1000  # queued runs taken to COMPLETED
    fleet_workers: int = 100  # by this many simulated agents
    fleet_pickups: int = 30
    fleet_processes: int = 1  # processes simulating the held fleet (2: beside the server here)

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            pickup_runs=8,
            ontime_runs=6,
            floor_samples=10,
            inprocess_runs=100,
            inprocess_limit=50,
            subprocess_runs=16,
            subprocess_limit=8,
            burst_runs=30,
            concurrent_runs=20,
            hold_seconds=3.0,
            heartbeat_seconds=1.0,
            idle_seconds=5.0,
            prefect_runs=3,
            prefect_gap=1.5,
            output_mb=10,
            fleet_agents="20",
            fleet_hold_seconds=3.0,
            fleet_heartbeat_seconds=1.0,
            # Each stop waits for the held polls to end: short ones keep the smoke test short.
            fleet_claim_wait=2.0,
            fleet_runs=30,
            fleet_workers=5,
            fleet_pickups=3,
            fleet_processes=1,
        )


@dataclass
class Section:
    """One scenario's figures, plus whatever raw data explains them."""

    name: str
    title: str
    figures: list[Figure] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    load_before: list[float] = field(default_factory=list)
    load_after: list[float] = field(default_factory=list)
    seconds: float = 0.0
    skipped: str | None = None
    error: str | None = None

    def add(self, figure: Figure) -> Figure:
        self.figures.append(figure)
        return figure

    def to_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "figures": [f.to_json() for f in self.figures],
            "details": self.details,
            "load_average_before": self.load_before,
            "load_average_after": self.load_after,
            "seconds": round(self.seconds, 1),
            "skipped": self.skipped,
            "error": self.error,
        }


@dataclass
class Context:
    lab: Lab
    sizes: Sizes
    quick: bool
    prefect_venv: Path | None  # None: the Prefect sections are skipped (reason in prefect_missing)
    prefect_missing: str | None = None
    verbose: bool = True
    _t0: float = field(default_factory=time.monotonic)

    def say(self, message: str) -> None:
        if self.verbose:
            print(f"[{time.monotonic() - self._t0:7.1f}s] {message}", file=sys.stderr, flush=True)


#: A scenario fills the sections it was handed (some produce more than one).
Scenario = Callable[[Context, dict[str, Section]], None]


def ms(seconds: float) -> float:
    return seconds * 1000.0
