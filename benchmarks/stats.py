"""Figures: a distribution (N, p50/p95/p99/max) or a single value, each with its target."""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

_OPS: dict[str, Callable[[float, float], bool]] = {"<=": operator.le, ">=": operator.ge}
_SHOWN = {"<=": "≤", ">=": "≥"}


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation between closest ranks."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Target:
    """A goal for one statistic of a figure, e.g. ``Target("p99", "<=", 250)``."""

    stat: str  # "p50", "p95", "p99", "max" or "value"
    op: str  # "<=" or ">="
    bound: float

    def met(self, figure: Figure) -> bool | None:
        actual = figure.stat(self.stat)
        if actual is None:
            return None
        return _OPS[self.op](actual, self.bound)

    def text(self, unit: str) -> str:
        stat = "" if self.stat == "value" else f"{self.stat} "
        return f"{stat}{_SHOWN[self.op]} {self.bound:g}{_unit_suffix(unit)}"


def _unit_suffix(unit: str) -> str:
    return "" if not unit else ("%" if unit == "%" else f" {unit}")


@dataclass
class Figure:
    """One line of the results table."""

    section: str
    name: str
    unit: str
    n: int | None = None
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None
    max: float | None = None
    value: float | None = None
    targets: list[Target] = field(default_factory=list)
    note: str = ""

    @classmethod
    def distribution(
        cls,
        section: str,
        name: str,
        unit: str,
        values: Sequence[float],
        targets: Sequence[Target] = (),
        note: str = "",
    ) -> Figure:
        if not values:
            return cls(section, name, unit, n=0, targets=list(targets), note=note or "no samples")
        return cls(
            section,
            name,
            unit,
            n=len(values),
            p50=percentile(values, 50),
            p95=percentile(values, 95),
            p99=percentile(values, 99),
            max=max(values),
            targets=list(targets),
            note=note,
        )

    @classmethod
    def scalar(
        cls,
        section: str,
        name: str,
        unit: str,
        value: float | None,
        targets: Sequence[Target] = (),
        n: int | None = None,
        note: str = "",
    ) -> Figure:
        return cls(section, name, unit, n=n, value=value, targets=list(targets), note=note)

    def stat(self, name: str) -> float | None:
        value: float | None = getattr(self, name)
        return value

    @property
    def met(self) -> bool | None:
        """All targets met (None when there is no target or nothing to judge)."""
        if not self.targets:
            return None
        results = [t.met(self) for t in self.targets]
        if any(r is None for r in results):
            return None
        return all(results)

    @property
    def target_text(self) -> str:
        return ", ".join(t.text(self.unit) for t in self.targets)

    def to_json(self) -> dict[str, Any]:
        return {
            "section": self.section,
            "name": self.name,
            "unit": self.unit,
            "n": self.n,
            "p50": self.p50,
            "p95": self.p95,
            "p99": self.p99,
            "max": self.max,
            "value": self.value,
            "target": self.target_text or None,
            "met": self.met,
            "note": self.note or None,
        }
