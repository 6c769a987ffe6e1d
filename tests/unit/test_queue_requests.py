"""What the agent sends for one queue and for several: one queue keeps the requests that
servers from before several queues per agent accept (their models forbid unknown fields)."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx

from agent.backends.http import HttpClient
from agent.backends.native import NativeBackend
from agent.models import Heartbeat

# The fields the previous server's ClaimRequest and Heartbeat models knew.
OLD_CLAIM = {"agent_id", "tags", "limit", "wait_seconds", "claim_id", "lead_seconds"}
OLD_HEARTBEAT = {
    "name", "work_queue_id", "tags", "hostname", "pid", "version", "runs_in_flight",
    "heartbeat_interval_seconds", "metrics", "run_ids",
}  # fmt: skip


class Server:
    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.seen.append((request.url.path, body))
        if request.url.path.endswith("/heartbeat"):
            return httpx.Response(200, json=_agent(body))
        return httpx.Response(200, json=[])


def _agent(beat: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "name": beat["name"],
        "work_queue_id": beat["work_queue_id"],
        "tags": [],
        "hostname": None,
        "pid": None,
        "version": None,
        "runs_in_flight": 0,
        "heartbeat_interval_seconds": 5,
        "metrics": None,
        "last_heartbeat": datetime.now(UTC).isoformat(),
        "status": "ONLINE",
    }


def talk(*queues: uuid.UUID) -> list[tuple[str, dict[str, Any]]]:
    server = Server()

    async def scenario() -> None:
        backend = NativeBackend(HttpClient("http://srv/api", transport=httpx.MockTransport(server)))
        try:
            several = list(queues) if len(queues) > 1 else None
            beat = Heartbeat(name="a", work_queue_id=queues[0], work_queue_ids=several)
            await backend.heartbeat(beat)
            await backend.claim(list(queues), uuid.uuid4(), [], 1, 0)
        finally:
            await backend.aclose()

    asyncio.run(scenario())
    return server.seen


def test_one_queue_sends_what_an_older_server_accepts() -> None:
    queue = uuid.uuid4()
    (beat_path, beat), (claim_path, claim) = talk(queue)
    assert beat_path == "/api/agents/heartbeat" and set(beat) <= OLD_HEARTBEAT
    assert claim_path == f"/api/work_queues/{queue}/claim" and set(claim) <= OLD_CLAIM


def test_several_queues_go_in_one_request_in_their_order() -> None:
    queues = [uuid.uuid4() for _ in range(3)]
    (_, beat), (claim_path, claim) = talk(*queues)
    assert beat["work_queue_ids"] == [str(q) for q in queues]
    assert claim_path == "/api/work_queues/claim"
    assert claim["work_queue_ids"] == [str(q) for q in queues]
