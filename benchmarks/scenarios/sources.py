"""(9) What a deployment's source adds to pickup: git (warm mirror) and a cached bundle.

One agent, one embedded server, three deployments of the same flow: a local path (the baseline),
a git repository served by ``git daemon`` on loopback, and a bundle uploaded to the server. The
first run of each sourced deployment is cold (the mirror is cloned, the bundle downloaded); the
rest are warm, interleaved round-robin with the local ones so all three see the same load.
Pickup is as in (1): run created → the flow's first act.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from agent.sources.bundle import pack
from benchmarks.api import NativeApi, unique
from benchmarks.core import Context, Section, ms
from benchmarks.lab import FLOWS, free_port, wait_for
from benchmarks.scenarios.pickup import one_run
from benchmarks.stats import Figure, Target, percentile

GIT_ENV = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@example.invalid",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@example.invalid",
}


def _git(*args: str, cwd: Path | None = None) -> None:
    import os

    subprocess.run(["git", *args], cwd=cwd, check=True, env=os.environ | GIT_ENV)


def _repo(root: Path) -> Path:
    """A bare repository holding the benchmark flows, as a small project would."""
    work, bare = root / "work", root / "served" / "flows.git"
    shutil.copytree(FLOWS, work, ignore=shutil.ignore_patterns("__pycache__"))
    _git("init", "-q", "-b", "main", str(work))
    _git("add", "-A", cwd=work)
    _git("commit", "-qm", "flows", cwd=work)
    _git("clone", "-q", "--bare", str(work), str(bare))
    return bare


def _deployment(api: NativeApi, queue_id: str, out: Path, source: dict[str, Any]) -> str:
    body = {
        "name": unique("d"),
        "work_queue_id": queue_id,
        "entrypoint": "bench.py:first_act",
        "parameters": {"out": str(out)},
        "source": source,
    }
    return str(api.call("POST", "deployments", json=body)["id"])


def run(ctx: Context, sections: dict[str, Section]) -> None:
    section = sections["sources"]
    n = ctx.sizes.pickup_runs
    out = ctx.lab.path("sources-stamps")
    bare = _repo(ctx.lab.path("sources-git"))
    port = free_port()
    daemon = ctx.lab.start(
        "git-daemon",
        [
            "git",
            "daemon",
            "--reuseaddr",
            "--export-all",
            "--listen=127.0.0.1",
            f"--port={port}",
            f"--base-path={bare.parent}",
            str(bare.parent),
        ],
        {"PATH": "/usr/bin:/bin"},
    )
    url = f"git://127.0.0.1:{port}/flows.git"
    wait_for(
        lambda: subprocess.run(["git", "ls-remote", url], capture_output=True).returncode == 0,
        20,
        "git daemon",
    )
    with ctx.lab.native_server("sources-server") as server:
        api = NativeApi(server.url)
        queue = api.queue()
        local = api.deployment(queue["id"], "bench.py:first_act", out=str(out))
        bundle = httpx.post(f"{server.url}/bundles", content=pack(FLOWS), timeout=60).json()
        git = _deployment(api, queue["id"], out, {"git": url, "ref": "main"})
        cached = _deployment(api, queue["id"], out, {"bundle": bundle["digest"]})
        ctx.lab.agent(server.url, queue["id"], name="sources-agent")
        one_run(api, local, out)  # the agent is up and warm
        cold = {"git": one_run(api, git, out), "bundle": one_run(api, cached, out)}
        ctx.say(f"sources: {n} runs each of a local, a git and a bundle deployment, interleaved")
        samples: dict[str, list[dict[str, Any]]] = {"local": [], "git": [], "bundle": []}
        for _ in range(n):
            for kind, deployment in random.sample(
                [("local", local), ("git", git), ("bundle", cached)], 3
            ):
                time.sleep(random.uniform(0.05, 0.15))  # back in its long poll
                samples[kind].append(one_run(api, deployment, out))
        api.close()
    ctx.lab.stop(daemon)

    picked = {k: [ms(s["first_act"] - s["created"]) for s in v] for k, v in samples.items()}
    section.add(Figure.distribution("sources", "pickup: local path", "ms", picked["local"]))
    for kind, title in (("git", "git, warm mirror (git://)"), ("bundle", "bundle, cached")):
        section.add(Figure.distribution("sources", f"pickup: {title}", "ms", picked[kind]))
        section.add(
            Figure.scalar(
                "sources",
                f"added by the {kind} source (p50 - local p50)",
                "ms",
                percentile(picked[kind], 50) - percentile(picked["local"], 50),
                [Target("value", "<=", 20)],
            )
        )
        section.add(
            Figure.scalar(
                "sources",
                f"first run, cold {'clone' if kind == 'git' else 'download'}",
                "ms",
                ms(cold[kind]["first_act"] - cold[kind]["created"]),
                [Target("value", "<=", 1000)] if kind == "git" else [],
            )
        )
    section.details["samples"] = samples
