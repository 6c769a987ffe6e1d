"""The UI's API at scale: ``python -m benchmarks.ui_scale [--runs N] [--lines M]``.

Fills a fresh server's SQLite database with N runs (default 100,000: every state, 20
deployments on 5 queues, tags, a state history each) and M log lines (default 1,000,000; a few
runs hold long logs), starts the real server on it, and times what the UI asks for: the runs
list (first page, filtered, deep keyset pages), a run's detail page (the run, its history, its
first and last log pages), the overview. Then a real agent runs a flow that prints a
time-stamped line every 200 ms while a reader follows the run's live log stream, and each line's
delay (printed → received) is measured. Times are round trips on loopback with a kept-alive
connection: server time plus well under a millisecond.

Writes ``benchmarks/results/<UTC time>-ui-scale.json``; docs/PERFORMANCE.md has the figures.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import insert

from agent.server.db import Database, migrate
from agent.server.orm import DeploymentRow, FlowRunRow, FlowRunStateRow, LogRow, WorkQueueRow
from benchmarks.lab import AGENT, FLOWS, REPO, Lab, clean_env, free_port, wait_for
from benchmarks.stats import percentile

STATES = ["COMPLETED"] * 14 + ["FAILED"] * 3 + ["CRASHED", "CANCELLED", "SCHEDULED"]
HISTORY = {
    "COMPLETED": ["SCHEDULED", "PENDING", "RUNNING", "COMPLETED"],
    "FAILED": ["SCHEDULED", "PENDING", "RUNNING", "FAILED"],
    "CRASHED": ["SCHEDULED", "PENDING", "RUNNING", "CRASHED"],
    "CANCELLED": ["SCHEDULED", "CANCELLED"],
    "SCHEDULED": ["SCHEDULED"],
}
BATCH = 20_000
LONG_LOGS = 50  # runs with a long log each: half the lines


def fill(home: Path, runs: int, lines: int) -> dict[str, Any]:
    """The database, filled through the ORM's own column types (so the server reads it back)."""
    migrate(home)
    db = Database(home / "flowagent.db")
    rng = random.Random(1)
    now = datetime.now(UTC)
    queues = [
        {"id": uuid.uuid4(), "name": f"q{i}", "tags": [], "paused": False, "created": now}
        for i in range(5)
    ]
    deployments = [
        {
            "id": uuid.uuid4(),
            "name": f"d{i}",
            "work_queue_id": queues[i % 5]["id"],
            "entrypoint": "flows.py:main",
            "parameters": {"day": "2026-01-01"},
            "tags": [],
            "runner_options": {},
            "env": {},
            "retries": 0,
            "retry_delay_seconds": 0.0,
            "created": now,
            "updated": now,
            "collision_strategy": "enqueue",
        }
        for i in range(20)
    ]
    started = time.monotonic()
    with db.write() as session:
        session.execute(insert(WorkQueueRow), queues)
        session.execute(insert(DeploymentRow), deployments)
    run_ids: list[uuid.UUID] = []
    span = timedelta(days=7)
    for first in range(0, runs, BATCH):
        rows, states = [], []
        for i in range(first, min(first + BATCH, runs)):
            deployment = deployments[i % 20]
            state = rng.choice(STATES)
            # Spread over the last week, in creation order like a real server's.
            created = now - span + span * (i / runs)
            run_id = uuid.uuid4()
            run_ids.append(run_id)
            rows.append(
                {
                    "id": run_id,
                    "name": f"{deployment['name']}-{i:06x}",
                    "deployment_id": deployment["id"],
                    "deployment_name": deployment["name"],
                    "work_queue_id": deployment["work_queue_id"],
                    "parameters": {"day": "2026-01-01", "n": i},
                    "tags": ["nightly", f"team-{i % 7}"] + (["rare"] if i % 1000 == 0 else []),
                    "env": {},
                    "expected_start_time": created,
                    "state_type": state,
                    "state_name": state.title(),
                    "state_message": None,
                    "state_timestamp": created + timedelta(seconds=2),
                    "runner_info": {"pid": 1000 + i % 30000, "exit_code": 0},
                    "attempt": 1,
                    "created": created,
                }
            )
            states += [
                {"flow_run_id": run_id, "type": s, "name": s.title(), "timestamp": created}
                for s in HISTORY[state]
            ]
        with db.write() as session:
            session.execute(insert(FlowRunRow), rows)
            session.execute(insert(FlowRunStateRow), states)
    long_runs = run_ids[-LONG_LOGS * 100 :: 100][:LONG_LOGS]
    per_long = lines // 2 // max(1, len(long_runs))
    written = 0

    def log_rows() -> Iterator[dict[str, Any]]:
        nonlocal written
        for run_id in long_runs:
            for n in range(per_long):
                yield _line(run_id, n, now)
        rest = lines - per_long * len(long_runs)
        for n in range(rest):
            yield _line(run_ids[n % len(run_ids)], n, now)

    batch: list[dict[str, Any]] = []
    for row in log_rows():
        batch.append(row)
        if len(batch) == BATCH:
            with db.write() as session:
                session.execute(insert(LogRow), batch)
            written += len(batch)
            batch = []
    if batch:
        with db.write() as session:
            session.execute(insert(LogRow), batch)
        written += len(batch)
    db.dispose()
    return {
        "runs": runs,
        "log_lines": written,
        "fill_seconds": round(time.monotonic() - started, 1),
        "deployment_id": str(deployments[3]["id"]),
        "run_ids": [str(r) for r in run_ids],
        "long_log_run": str(long_runs[0]),
        "lines_per_long_run": per_long,
    }


def _line(run_id: uuid.UUID, n: int, now: datetime) -> dict[str, Any]:
    return {
        "flow_run_id": run_id,
        "timestamp": now,
        "stream": "stdout",
        "level": "INFO",
        "line": f"processing record {n} of the batch: ok",
    }


def timed(
    client: httpx.Client, samples: int, request: Callable[[int], httpx.Response]
) -> dict[str, float]:
    times = []
    for i in range(samples):
        started = time.perf_counter()
        response = request(i)
        elapsed = (time.perf_counter() - started) * 1000
        response.raise_for_status()
        times.append(elapsed)
    return {
        "p50_ms": round(percentile(times, 50), 1),
        "p95_ms": round(percentile(times, 95), 1),
        "max_ms": round(max(times), 1),
        "n": samples,
    }


def measure_api(url: str, data: dict[str, Any], samples: int) -> dict[str, dict[str, float]]:
    ids = data["run_ids"]
    rng = random.Random(2)
    with httpx.Client(base_url=url + "/", timeout=60) as client:
        client.get("flow_runs", params={"limit": 1})  # warm the connection
        deep = [ids[len(ids) // 10], ids[len(ids) // 2], ids[100]]  # 90 %, 50 %, ~all deep

        def detail(i: int) -> httpx.Response:
            run_id = ids[rng.randrange(len(ids))] if i % 2 else data["long_log_run"]
            for path in (f"flow_runs/{run_id}", f"flow_runs/{run_id}/states"):
                client.get(path).raise_for_status()
            return client.get(f"flow_runs/{run_id}/logs", params={"limit": 1000})

        def last_log_page(i: int) -> httpx.Response:
            # The long logs were written first: the first long run's lines are ids 1…per_long.
            after = max(0, data["lines_per_long_run"] - 1000)
            return client.get(
                f"flow_runs/{data['long_log_run']}/logs", params={"after": after, "limit": 1000}
            )

        return {
            "runs list, first page (50)": timed(
                client, samples, lambda i: client.get("flow_runs", params={"limit": 50})
            ),
            "runs list, state=FAILED": timed(
                client,
                samples,
                lambda i: client.get("flow_runs", params={"limit": 50, "state": "FAILED"}),
            ),
            "runs list, one deployment": timed(
                client,
                samples,
                lambda i: client.get(
                    "flow_runs", params={"limit": 50, "deployment_id": data["deployment_id"]}
                ),
            ),
            "runs list, tag=team-3": timed(
                client,
                samples,
                lambda i: client.get("flow_runs", params={"limit": 50, "tag": "team-3"}),
            ),
            "runs list, tag=rare (1 run in 1,000)": timed(
                client,
                samples,
                lambda i: client.get("flow_runs", params={"limit": 50, "tag": "rare"}),
            ),
            "runs list, deep keyset page": timed(
                client,
                samples,
                lambda i: client.get("flow_runs", params={"limit": 50, "before": deep[i % 3]}),
            ),
            "run detail (run + states + 1,000 log lines)": timed(client, samples, detail),
            "run detail, a later log page": timed(client, samples, last_log_page),
            "overview, 24 h": timed(
                client, max(5, samples // 4), lambda i: client.get("overview", params={"hours": 24})
            ),
            "overview, 7 days (all runs)": timed(
                client,
                max(5, samples // 4),
                lambda i: client.get("overview", params={"hours": 168}),
            ),
        }


def measure_stream(lab: Lab, url: str, count: int) -> dict[str, float]:
    """A real agent runs ``ticks``; a reader on the live stream notes when each line arrives."""
    with httpx.Client(base_url=url + "/", timeout=60) as client:
        queue = client.post("work_queues", json={"name": f"stream-{time.time_ns()}"}).json()
        deployment = client.post(
            "deployments",
            json={
                "name": f"ticks-{time.time_ns()}",
                "work_queue_id": queue["id"],
                "entrypoint": "bench.py:ticks",
                "working_dir": str(FLOWS),
                "parameters": {"count": count, "every": 0.2},
            },
        ).json()
        lab.agent(url, queue["id"], name="stream-agent")
        run = client.post(f"deployments/{deployment['id']}/runs", json={}).json()
    delays: list[float] = []

    def read() -> None:
        with (
            httpx.Client(base_url=url + "/", timeout=120) as reader,
            reader.stream("GET", f"flow_runs/{run['id']}/logs/stream") as response,
        ):
            name = ""
            for line in response.iter_lines():
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: ") and name == "log":
                    text = json.loads(line[6:])["line"]
                    if text.startswith("tick "):
                        delays.append((time.time() - float(text[5:])) * 1000)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=count * 0.2 + 60)
    wait_for(lambda: not reader.is_alive(), 5, "the stream to end with the run")
    return {
        "lines": len(delays),
        "p50_ms": round(percentile(delays, 50), 1),
        "p95_ms": round(percentile(delays, 95), 1),
        "max_ms": round(max(delays), 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ui_scale", description=__doc__)
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--ticks", type=int, default=50)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)
    with Lab() as lab:
        home = lab.path("server")
        print(f"filling {args.runs:,} runs and {args.lines:,} log lines…", file=sys.stderr)
        data = fill(home, args.runs, args.lines)
        print(f"filled in {data['fill_seconds']} s; starting the server", file=sys.stderr)
        port = free_port()
        server = lab.start(
            "server",
            [AGENT, "server", "start", "--port", str(port)],
            clean_env(AGENT_HOME=str(home), AGENT_LOG_FORMAT="json"),
        )
        url = f"http://127.0.0.1:{port}/api"

        def healthy() -> bool:
            try:
                return httpx.get(f"{url}/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, 60, "the server")
        api = measure_api(url, data, args.samples)
        stream = measure_stream(lab, url, args.ticks)
        lab.stop(server)
        size = sum(path.stat().st_size for path in home.glob("flowagent.db*"))
    result = {
        "meta": {
            "when": datetime.now(UTC).isoformat(),
            "runs": data["runs"],
            "log_lines": data["log_lines"],
            "fill_seconds": data["fill_seconds"],
            "database_bytes": size,
        },
        "api": api,
        "stream": stream,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-ui-scale.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    width = max(len(name) for name in api)
    for name, figure in api.items():
        print(f"{name:<{width}}  p50 {figure['p50_ms']:>7} ms  p95 {figure['p95_ms']:>7} ms")
    print(
        f"{'live log line, printed → received':<{width}}  p50 {stream['p50_ms']:>7} ms  "
        f"p95 {stream['p95_ms']:>7} ms  max {stream['max_ms']} ms ({stream['lines']} lines)"
    )
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
