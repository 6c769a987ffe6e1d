"""Helpers the scenarios share: streams of runs, their first-act stamps, draining a queue."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.lab import LabError
from benchmarks.sampling import read_stamps

#: Creates one run (scheduled at the given epoch time, or now when None); returns its id.
CreateRun = Callable[[float | None], str]


def stream(
    create: CreateRun,
    n: int,
    gap: tuple[float, float],
    lead: tuple[float, float] | None = None,
) -> list[dict[str, Any]]:
    """Create ``n`` runs, one every ``gap`` seconds (uniformly random), without waiting for
    them; each is due now, or ``lead`` seconds (uniformly random) after its creation."""
    samples: list[dict[str, Any]] = []
    for i in range(n):
        if i:
            time.sleep(random.uniform(*gap))
        created = time.time()
        due = None if lead is None else created + random.uniform(*lead)
        run_id = create(due)
        samples.append(
            {"run_id": run_id, "created": created, "answered": time.time(), "due": due or created}
        )
    return samples


def collect_stamps(
    out: Path, samples: list[dict[str, Any]], timeout: float, poll: float = 0.1
) -> list[str]:
    """Wait until every sample's flow wrote its stamp (or ``timeout``); add them as
    ``first_act``. Returns the ids of runs that never started."""
    deadline = time.monotonic() + timeout
    wanted = {s["run_id"] for s in samples}
    while True:
        stamps = read_stamps(out)
        if wanted <= stamps.keys() or time.monotonic() > deadline:
            break
        time.sleep(poll)
    for sample in samples:
        if sample["run_id"] in stamps:
            sample["first_act"] = stamps[sample["run_id"]]
    return sorted(wanted - stamps.keys())


def late_ms(samples: list[dict[str, Any]], since: str = "due") -> list[float]:
    """Milliseconds from ``since`` to each started run's first act."""
    return [(s["first_act"] - s[since]) * 1000 for s in samples if "first_act" in s]


def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05
) -> float:
    """Poll ``predicate``; return the wall-clock time it first held."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise LabError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)
    return time.time()
