"""The command line: pick scenarios, run them, print the table, write the JSON."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

import psutil

from benchmarks.core import Context, Scenario, Section, Sizes
from benchmarks.lab import PREFECT_VENV, REPO, Lab
from benchmarks.report import render_table
from benchmarks.sampling import load_average
from benchmarks.scenarios import (
    concurrency,
    fleet,
    footprint,
    ontime,
    output,
    pickup,
    prefect,
    queues,
    sources,
    throughput,
)

RESULTS = Path(__file__).resolve().parent / "results"

#: (scenario, the sections it fills with their titles), in the order they run.
SCENARIOS: list[tuple[Scenario, list[tuple[str, str]]]] = [
    (
        pickup.run,
        [
            ("pickup", "(1) ad-hoc pickup: subprocess runner, embedded server"),
            ("dispatch", "(3) dispatch overhead vs. the floors, same run"),
        ],
    ),
    (ontime.run, [("ontime", "(2) on-time start of runs scheduled 1-2 s ahead")]),
    (
        throughput.run,
        [
            ("throughput", "(4) throughput: completed runs per second"),
            ("burst", "(4) a burst of runs created at once"),
        ],
    ),
    (concurrency.run, [("concurrency", "(5) concurrent sleeping subprocess runs, one agent")]),
    (footprint.run, [("footprint", "(6) idle footprint of agent and server")]),
    (output.run, [("output", "(8) agent memory while a run prints a lot")]),
    (sources.run, [("sources", "(9) pickup of git-sourced and bundled deployments")]),
    (queues.run, [("queues", "(10) pickup with several queues per agent")]),
    (fleet.run, [("fleet", "(11) a fleet of simulated agents: SQLite, PostgreSQL, replicas")]),
    (prefect.run, [("prefect", "(7) side by side on a Prefect 3 server")]),
]
NAMES = [name for _, sections in SCENARIOS for name, _ in sections]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="flowagent's benchmarks: pickup, on-time starts, dispatch, throughput, "
        "concurrency, footprint, and Prefect's worker side by side.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes and 5 s windows (CI smoke test)"
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=NAMES,
        metavar="NAME",
        help=f"run only these sections ({', '.join(NAMES)})",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=RESULTS,
        help="directory for <timestamp>.json and latest.json (default: benchmarks/results)",
    )
    parser.add_argument(
        "--keep", type=Path, metavar="DIR", help="work in DIR and keep it (logs, databases)"
    )
    parser.add_argument(
        "--prefect-venv",
        type=Path,
        default=PREFECT_VENV,
        help="the venv with Prefect 3 (default: .prefect-venv, from scripts/prefect-setup.sh)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SIZE=VALUE",
        help=f"override one size, e.g. --set concurrent_runs=300 (sizes: {', '.join(f.name for f in fields(Sizes))})",
    )
    parser.add_argument(
        "--py-spy",
        type=Path,
        metavar="DIR",
        help="record a py-spy flame graph of every server and agent into DIR (needs py-spy)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    return parser.parse_args(argv)


def prefect_venv(venv: Path) -> tuple[Path | None, str | None]:
    """The Prefect venv, or why there is none. Missing in CI is an error, elsewhere a skip."""
    if (venv / "bin" / "prefect").exists():
        return venv, None
    reason = f"{venv} is missing: run `bash scripts/prefect-setup.sh`"
    if os.environ.get("CI"):
        raise SystemExit(f"error: {reason} (CI is set, so the Prefect section may not be skipped)")
    return None, reason


def override(sizes: Sizes, pairs: list[str]) -> Sizes:
    """``--set name=value`` pairs applied to ``sizes`` (each value of the field's own type)."""
    types = {f.name: type(getattr(sizes, f.name)) for f in fields(Sizes)}
    changes: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or name not in types:
            raise SystemExit(
                f"error: --set {pair!r}: expected SIZE=VALUE, SIZE one of {sorted(types)}"
            )
        try:
            changes[name] = types[name](value)
        except ValueError:
            raise SystemExit(f"error: --set {pair!r}: not a {types[name].__name__}") from None
    return replace(sizes, **changes)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    selected = set(args.only or NAMES)
    venv, missing = (None, None)
    if "prefect" in selected:
        venv, missing = prefect_venv(args.prefect_venv.resolve())
    sizes = override(Sizes.quick() if args.quick else Sizes(), args.set)
    started = dt.datetime.now(dt.UTC)
    meta = machine(args.quick, sizes, venv)
    meta["load_average_before"] = load_average()
    sections: dict[str, Section] = {}
    failed = False
    t0 = time.monotonic()
    with Lab(args.keep, profile=args.py_spy) as lab:
        ctx = Context(lab, sizes, args.quick, venv, missing, verbose=not args.quiet)
        ctx.say(f"work directory {lab.root}; load average {meta['load_average_before']}")
        for scenario, names in SCENARIOS:
            wanted = {n: Section(n, title) for n, title in names if n in selected}
            if not wanted:
                continue
            load_before = load_average()
            began = time.monotonic()
            try:
                scenario(ctx, wanted)
            except Exception as exc:  # one broken scenario must not hide the others' figures
                failed = True
                ctx.say(f"{'/'.join(wanted)} failed:\n{traceback.format_exc()}")
                for section in wanted.values():
                    section.error = f"{type(exc).__name__}: {exc}"
            finally:
                lab.stop_all()  # whatever the scenario left running
            for section in wanted.values():
                section.load_before = load_before
                section.load_after = load_average()
                section.seconds = time.monotonic() - began
            sections.update(wanted)
    meta["load_average_after"] = load_average()
    meta["seconds"] = round(time.monotonic() - t0, 1)
    ordered = {n: sections[n] for n in NAMES if n in sections}
    print(render_table(ordered.values(), meta))
    whole = selected == set(NAMES)
    path = write_results(args.out, started, args.quick, meta, ordered, whole=whole)
    print(f"\nwrote {path}")
    return 1 if failed else 0


def write_results(
    out: Path,
    started: dt.datetime,
    quick: bool,
    meta: dict[str, Any],
    sections: dict[str, Section],
    *,
    whole: bool = True,
) -> Path:
    """Write ``<timestamp>.json``; a run of every section is also the new ``latest.json``
    (a run of some sections (``--only``) must not replace the last whole run's record)."""
    out.mkdir(parents=True, exist_ok=True)
    suffix = "-quick" if quick else ""
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    document = {"meta": meta, "sections": {n: s.to_json() for n, s in sections.items()}}
    path = out / f"{stamp}{suffix}.json"
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    if whole:
        shutil.copyfile(path, out / f"latest{suffix}.json")
    return path


def machine(quick: bool, sizes: Sizes, venv: Path | None) -> dict[str, Any]:
    """Where and on what the figures were taken."""
    memory = psutil.virtual_memory()
    return {
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "quick": quick,
        "sizes": asdict(sizes),
        "host": platform.node(),
        "cpu": _cpu_model(),
        "cores": psutil.cpu_count(logical=True),
        "memory_gib": round(memory.total / 2**30, 1),
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "flowagent_commit": _git("rev-parse", "--short", "HEAD"),
        "flowagent_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "prefect": _prefect_version(venv),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _prefect_version(venv: Path | None) -> str | None:
    if venv is None:
        return None
    try:
        return subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import prefect; print(prefect.__version__)"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


if __name__ == "__main__":
    sys.exit(main())
