"""Just enough of the two servers' HTTP APIs to set up runs and read back what happened.

Both servers may answer 503 under SQLite lock contention; every call is retried then, as a
client should. Runs can be created one at a time (sync) or all at once (:func:`create_many`).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from benchmarks.lab import FLOWS

RETRY = frozenset({429, 502, 503, 504})
UNFINISHED = ("SCHEDULED", "PENDING", "RUNNING", "CANCELLING")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def parse_ts(text: str) -> float:
    """A server timestamp (ISO 8601, UTC when it names no zone) as epoch seconds."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


class Api:
    """A kept-alive client with retries on 429/5xx and dropped connections."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        self.url = url.rstrip("/")
        self.headers = headers or {}
        self.http = httpx.Client(base_url=self.url + "/", headers=self.headers, timeout=60)

    def close(self) -> None:
        self.http.close()

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        for attempt in range(100):
            try:
                response = self.http.request(method, path, **kwargs)
            except httpx.TransportError:
                if attempt > 20:
                    raise
                time.sleep(0.1)
                continue
            if response.status_code in RETRY:
                time.sleep(0.05)
                continue
            if response.status_code >= 300:
                raise RuntimeError(f"{method} {path}: {response.status_code} {response.text}")
            return response.json() if response.content else None
        raise RuntimeError(f"{method} {path}: kept answering {response.status_code}")


class NativeApi(Api):
    """Our embedded server."""

    def queue(self, *, paused: bool = False) -> dict[str, Any]:
        queue: dict[str, Any] = self.call("POST", "work_queues", json={"name": unique("q")})
        if paused:
            self.pause(queue["id"], True)
        return queue

    def pause(self, queue_id: str, paused: bool) -> None:
        self.call("PATCH", f"work_queues/{queue_id}", json={"paused": paused})

    def deployment(
        self,
        queue_id: str,
        entrypoint: str | None = None,
        *,
        command: list[str] | None = None,
        runner: str | None = None,
        working_dir: Path = FLOWS,
        **parameters: Any,
    ) -> str:
        body: dict[str, Any] = {
            "name": unique("d"),
            "work_queue_id": queue_id,
            "working_dir": str(working_dir),
            "parameters": parameters,
        }
        if command is not None:
            body["command"] = command
        else:
            body["entrypoint"] = entrypoint
        if runner is not None:
            body["runner"] = runner
        return str(self.call("POST", "deployments", json=body)["id"])

    def run(self, deployment_id: str, *, at: float | None = None, **parameters: Any) -> str:
        body: dict[str, Any] = {"parameters": parameters}
        if at is not None:
            body["expected_start_time"] = iso(at)
        return str(self.call("POST", f"deployments/{deployment_id}/runs", json=body)["id"])

    def any_in(self, queue_id: str, *states: str) -> bool:
        """Whether the queue holds a run in one of ``states`` (a cheap query: limit 1)."""
        return bool(self.runs(queue_id, *states, limit=1))

    def runs(self, queue_id: str, *states: str, limit: int = 1000) -> list[dict[str, Any]]:
        params: list[tuple[str, str | int]] = [("work_queue_id", queue_id), ("limit", limit)]
        params += [("state", s) for s in states]
        runs: list[dict[str, Any]] = self.call("GET", "flow_runs", params=params)
        return runs

    def states(self, run_id: str) -> list[dict[str, Any]]:
        states: list[dict[str, Any]] = self.call("GET", f"flow_runs/{run_id}/states")
        return states

    def agents(self) -> list[dict[str, Any]]:
        agents: list[dict[str, Any]] = self.call("GET", "agents")
        return agents

    def run_path(self, deployment_id: str) -> str:
        return f"deployments/{deployment_id}/runs"


class PrefectApi(Api):
    """A Prefect 3 server."""

    def __init__(self, url: str) -> None:
        super().__init__(url, {"X-PREFECT-API-VERSION": "0.8.4"})

    def pool_and_queue(self) -> tuple[str, dict[str, Any]]:
        pool = unique("pool")
        self.call("POST", "work_pools/", json={"name": pool, "type": "process"})
        queue = self.call("POST", f"work_pools/{pool}/queues", json={"name": unique("q")})
        return pool, queue

    def deployment(self, pool: str, queue_name: str, entrypoint: str, **parameters: Any) -> str:
        flow = self.call("POST", "flows/", json={"name": entrypoint.rpartition(":")[2]})
        body = {
            "name": unique("d"),
            "flow_id": flow["id"],
            "work_pool_name": pool,
            "work_queue_name": queue_name,
            "entrypoint": entrypoint,
            "parameters": parameters,
            "pull_steps": [
                {"prefect.deployments.steps.set_working_directory": {"directory": str(FLOWS)}}
            ],
        }
        return str(self.call("POST", "deployments/", json=body)["id"])

    def run(self, deployment_id: str, *, at: float | None = None, **parameters: Any) -> str:
        body: dict[str, Any] = {"parameters": parameters}
        if at is not None:
            body["state"] = {"type": "SCHEDULED", "state_details": {"scheduled_time": iso(at)}}
        path = f"deployments/{deployment_id}/create_flow_run"
        return str(self.call("POST", path, json=body)["id"])

    def run_states(self, run_ids: Sequence[str]) -> dict[str, str]:
        """The state type of each run (looked up in pages of 200)."""
        found: dict[str, str] = {}
        ids = list(run_ids)
        for start in range(0, len(ids), 200):
            page = ids[start : start + 200]
            body = {"flow_runs": {"id": {"any_": page}}, "limit": 200}
            for run in self.call("POST", "flow_runs/filter", json=body):
                found[run["id"]] = run["state_type"]
        return found

    def states(self, run_id: str) -> list[dict[str, Any]]:
        states: list[dict[str, Any]] = self.call(
            "GET", "flow_run_states/", params={"flow_run_id": run_id}
        )
        return states

    def workers(self, pool: str) -> list[dict[str, Any]]:
        workers: list[dict[str, Any]] = self.call(
            "POST", f"work_pools/{pool}/workers/filter", json={}
        )
        return workers


async def _create_many(
    url: str, path: str, bodies: Sequence[dict[str, Any]], concurrency: int
) -> list[str]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(
        base_url=url.rstrip("/") + "/", timeout=120, limits=limits
    ) as http:

        async def one(body: dict[str, Any]) -> str:
            async with gate:
                for _ in range(200):
                    try:
                        response = await http.post(path, json=body)
                    except httpx.TransportError:
                        await asyncio.sleep(0.1)
                        continue
                    if response.status_code in RETRY:
                        await asyncio.sleep(0.05)
                        continue
                    if response.status_code >= 300:
                        raise RuntimeError(f"POST {path}: {response.status_code} {response.text}")
                    return str(response.json()["id"])
                raise RuntimeError(f"POST {path}: kept failing")

        return list(await asyncio.gather(*(one(b) for b in bodies)))


def create_many(
    api: NativeApi, deployment_id: str, bodies: Sequence[dict[str, Any]], concurrency: int = 32
) -> list[str]:
    """Create runs all at once: ``concurrency`` requests in flight at a time."""
    return asyncio.run(_create_many(api.url, api.run_path(deployment_id), bodies, concurrency))
