"""The source-preparation step alone: ``SourceCache.prepare`` timed, and its git processes counted.

``python -m benchmarks.source_steps [--runs N] [--files N]``: no server, no agent. A repository of
small files is served by ``git daemon`` on loopback (``git://``, as section 9 does); after one
cold run, each warm step is repeated ``--runs`` times and its p50 / p90 printed with the number of
git processes the agent started per step (counted by a ``git`` on PATH that logs and execs the
real one; each fetch or ls-remote also costs one ``upload-pack`` in the daemon, not counted).

Steps: a new run of a branch (warm mirror), a retry attempt of a run whose commit was recorded,
and a run of a cached bundle. Each prepared checkout is released, as the supervisor does.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import structlog

from agent.models import BundleSource, FlowRun, GitSource, RunSource
from agent.sources.bundle import digest_of, pack
from agent.sources.cache import SourceCache

GIT_ENV = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@example.invalid",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@example.invalid",
}


def _tree(root: Path, files: int) -> None:
    """A small project: ``files`` files of 2 KiB over a few directories."""
    for i in range(files):
        path = root / f"pkg{i % 4}" / f"module_{i}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# module {i}\n" + "x = 1\n" * 340)
    (root / "hello.py").write_text("def main() -> None:\n    pass\n")


def _git(*args: str, cwd: Path | None = None) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, env=os.environ | GIT_ENV)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _counting_git(bin_dir: Path, log: Path) -> None:
    real = shutil.which("git")
    assert real is not None
    shim = bin_dir / "git"
    shim.write_text(f'#!/bin/sh\necho "$1 $2 $3 $4" >> {log}\nexec {real} "$@"\n')
    shim.chmod(0o755)


class Downloader:
    def __init__(self, data: bytes) -> None:
        self.data = data

    async def download_bundle(self, digest: str) -> bytes:
        return self.data


def _run(source: RunSource | None = None) -> FlowRun:
    # Only what prepare reads: the run's id and its recorded source.
    fields: dict[str, Any] = {"id": uuid.uuid4(), "source": source}
    return FlowRun.model_construct(**fields)


async def _measure(
    cache: SourceCache, log: Path, runs: int, step: Any, gap: float
) -> tuple[list[float], list[int]]:
    times, spawns = [], []
    for _ in range(runs):
        await asyncio.sleep(gap)
        _spawned(log)
        run = _run(step.recorded)
        started = time.perf_counter()
        await cache.prepare(run, step.source)
        times.append((time.perf_counter() - started) * 1000)
        spawns.append(_spawned(log))
        cache.release(run.id)
    return times, spawns


def _spawned(log: Path) -> int:
    """How many git processes started since the last call."""
    count = len(log.read_text().splitlines()) if log.exists() else 0
    log.write_text("")
    return count


class Step:
    def __init__(self, name: str, source: Any, recorded: RunSource | None = None) -> None:
        self.name, self.source, self.recorded = name, source, recorded


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.source_steps")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--files", type=int, default=40)
    parser.add_argument(
        "--gap",
        type=float,
        default=0.5,
        help="seconds between two runs (a spare copy is made in such a gap), 0: back to back",
    )
    args = parser.parse_args(argv)
    # The agent's per-run log lines would drown the table (and cost a write each).
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    with tempfile.TemporaryDirectory(prefix="source-steps-") as tmp:
        root = Path(tmp)
        work, served = root / "work", root / "served"
        _tree(work, args.files)
        _git("init", "-q", "-b", "main", str(work))
        _git("add", "-A", cwd=work)
        _git("commit", "-qm", "flows", cwd=work)
        _git("clone", "-q", "--bare", str(work), str(served / "flows.git"))
        port = _free_port()
        daemon = subprocess.Popen(
            [
                "git",
                "daemon",
                "--reuseaddr",
                "--export-all",
                "--listen=127.0.0.1",
                f"--port={port}",
                f"--base-path={served}",
                str(served),
            ]
        )
        url = f"git://127.0.0.1:{port}/flows.git"
        try:
            for _ in range(100):
                probe = subprocess.run(["git", "ls-remote", url], capture_output=True)
                if probe.returncode == 0:
                    break
                time.sleep(0.1)
            bin_dir, log = root / "bin", root / "git.log"
            bin_dir.mkdir()
            _counting_git(bin_dir, log)
            os.environ["PATH"] = f"{bin_dir}:{os.environ['PATH']}"
            data = pack(work)
            digest = digest_of(data)
            cache = SourceCache(root / "home", root / "home" / "checkouts", {}, Downloader(data))
            asyncio.run(_steps(cache, url, digest, log, args.runs, args.files, args.gap))
        finally:
            daemon.terminate()
            daemon.wait()


async def _steps(
    cache: SourceCache, url: str, digest: str, log: Path, runs: int, files: int, gap: float
) -> None:
    source = GitSource(git=url, ref="main")
    cold = _run()
    started = time.perf_counter()
    prepared = await cache.prepare(cold, source)
    print(f"cold git run: {(time.perf_counter() - started) * 1000:.1f} ms")
    cache.release(cold.id)
    bundle = BundleSource(bundle=digest)
    first = _run()
    await cache.prepare(first, bundle)
    cache.release(first.id)
    steps = [
        Step("git: new run of a branch (warm)", source),
        Step("git: retry attempt (commit recorded)", source, prepared.record),
        Step("bundle: cached", bundle),
    ]
    load = os.getloadavg()
    print(
        f"{runs} runs per step, {files + 1} files, {gap} s apart, "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    print(f"{'step':42} {'p50 ms':>8} {'p90 ms':>8} {'git procs':>10}")
    for step in steps:
        times, spawns = await _measure(cache, log, runs, step, gap)
        times.sort()
        p90 = times[min(len(times) - 1, int(len(times) * 0.9))]
        print(
            f"{step.name:42} {statistics.median(times):8.1f} {p90:8.1f} "
            f"{statistics.median(spawns):10.0f}"
        )
    if hasattr(cache, "close"):  # spare copies (absent before they existed)
        await cache.close()


if __name__ == "__main__":
    main(sys.argv[1:])
