"""The results table, as printed and as pasted into docs/PERFORMANCE.md."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from benchmarks.core import Section
from benchmarks.stats import Figure

COLUMNS = ("figure", "N", "p50", "p95", "p99", "max", "value", "unit", "target", "met")
_MET = {True: "yes", False: "NO", None: ""}


def number(value: float | None) -> str:
    if value is None:
        return ""
    size = abs(value)
    if size >= 10 and float(value).is_integer():
        return f"{value:,.0f}"
    if size >= 100:
        return f"{value:,.0f}"
    if size >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def row(figure: Figure) -> list[str]:
    return [
        figure.name,
        "" if figure.n is None else str(figure.n),
        number(figure.p50),
        number(figure.p95),
        number(figure.p99),
        number(figure.max),
        number(figure.value),
        figure.unit,
        figure.target_text,
        _MET[figure.met],
    ]


def render_table(sections: Iterable[Section], meta: dict[str, Any]) -> str:
    rows: list[list[str] | str] = []
    for section in sections:
        rows.append(f"{section.title}   [load {_load(section)}; {section.seconds:.0f}s]")
        if section.skipped:
            rows.append(f"  skipped: {section.skipped}")
        if section.error:
            rows.append(f"  ERROR: {section.error}")
        for figure in section.figures:
            rows.append(row(figure))
            if figure.note:
                rows.append(f"      ({figure.note})")
    widths = [len(c) for c in COLUMNS]
    for r in rows:
        if isinstance(r, list):
            widths = [max(w, len(c)) for w, c in zip(widths, r, strict=True)]
    right = {1, 2, 3, 4, 5, 6}

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    rule = "-" * (sum(widths) + 2 * (len(widths) - 1))
    out = [_machine_line(meta), rule, line(list(COLUMNS)), rule]
    for r in rows:
        out.append(line(r) if isinstance(r, list) else r)
    out.append(rule)
    return "\n".join(out)


def _load(section: Section) -> str:
    before = section.load_before[0] if section.load_before else None
    after = section.load_after[0] if section.load_after else None
    return f"{number(before)} → {number(after)}"


def _machine_line(meta: dict[str, Any]) -> str:
    mode = "quick" if meta.get("quick") else "full"
    return (
        f"flowagent {meta.get('flowagent_commit')}{'+dirty' if meta.get('flowagent_dirty') else ''}"
        f" · {meta.get('cpu')} x {meta.get('cores')} · {meta.get('memory_gib')} GiB"
        f" · Linux {meta.get('kernel')} · Python {meta.get('python')}"
        f" · Prefect {meta.get('prefect') or '—'} · {mode}"
        f" · load {meta.get('load_average_before')} → {meta.get('load_average_after')}"
    )
