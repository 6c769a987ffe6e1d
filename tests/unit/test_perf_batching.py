"""The Coalescer, and the native backend's batched reports against a mock transport."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.backends import native
from agent.backends.batching import Coalescer
from agent.backends.http import HttpClient
from agent.backends.native import NativeBackend
from agent.errors import Conflict, ServerUnavailable
from agent.models import StateProposal, StateType, utcnow
from agent.outbox import Outbox
from agent.spool import Spool


class Recorder:
    """A send_one/send_many pair that waits for a gate, so calls pile up behind it."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.alone: list[int] = []
        self.batches: list[list[int]] = []

    async def one(self, item: int) -> int:
        self.alone.append(item)
        await self.gate.wait()
        if item < 0:
            raise ValueError(f"bad {item}")
        return item * 10

    async def many(self, items: Sequence[int]) -> list[int | BaseException]:
        self.batches.append(list(items))
        await self.gate.wait()
        return [ValueError(f"bad {i}") if i < 0 else i * 10 for i in items]


def test_a_lone_call_goes_out_at_once_on_its_own() -> None:
    async def scenario() -> tuple[int, Recorder]:
        rec = Recorder()
        rec.gate.set()
        return await Coalescer(rec.one, rec.many).submit(3), rec

    result, rec = asyncio.run(scenario())
    assert result == 30 and rec.alone == [3] and rec.batches == []


def test_calls_made_while_the_line_is_busy_go_out_together_in_order() -> None:
    async def scenario() -> tuple[list[Any], Recorder, int]:
        rec = Recorder()
        coalescer: Coalescer[int, int] = Coalescer(rec.one, rec.many, concurrency=2, max_batch=3)
        calls = [asyncio.create_task(coalescer.submit(i)) for i in (1, 2, 3, -4, 5, 6, 7)]
        await asyncio.sleep(0)
        rec.gate.set()
        results = await asyncio.gather(*calls, return_exceptions=True)
        return results, rec, coalescer.batches_sent

    results, rec, batches = asyncio.run(scenario())
    assert rec.alone[:2] == [1, 2]  # the first two found the line free
    assert rec.batches == [[3, -4, 5], [6, 7]]
    assert batches == 2
    assert results[:3] == [10, 20, 30] and results[4:] == [50, 60, 70]
    assert isinstance(results[3], ValueError)  # only its own caller hears of it


def test_a_failed_batch_fails_each_of_its_callers_and_a_cancelled_call_is_not_sent() -> None:
    async def scenario() -> tuple[list[Any], list[list[int]]]:
        seen: list[list[int]] = []
        gate = asyncio.Event()

        async def one(item: int) -> int:
            await gate.wait()
            return item

        async def many(items: Sequence[int]) -> list[int | BaseException]:
            seen.append(list(items))
            raise ServerUnavailable("server down")

        coalescer: Coalescer[int, int] = Coalescer(one, many, concurrency=1)
        first = asyncio.create_task(coalescer.submit(0))
        await asyncio.sleep(0)
        queued = [asyncio.create_task(coalescer.submit(i)) for i in (1, 2, 3)]
        await asyncio.sleep(0)
        queued[1].cancel()
        gate.set()
        results = await asyncio.gather(first, *queued, return_exceptions=True)
        return results, seen

    results, seen = asyncio.run(scenario())
    assert results[0] == 0
    assert seen == [[1, 3]]
    assert isinstance(results[1], ServerUnavailable) and isinstance(results[3], ServerUnavailable)
    assert isinstance(results[2], asyncio.CancelledError)


# --------------------------------------------------------------------------- the native backend


def _run_json(run_id: str, state: str) -> dict[str, Any]:
    now = utcnow().isoformat()
    return {
        "id": run_id,
        "name": "r",
        "deployment_id": str(uuid.uuid4()),
        "deployment_name": "d",
        "work_queue_id": str(uuid.uuid4()),
        "parameters": {},
        "tags": [],
        "env": {},
        "expected_start_time": now,
        "state": {"type": state, "name": state.title(), "timestamp": now},
        "created": now,
    }


class OldServer:
    """A server from before the batch route: the path answers 405, single reports work."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(f"{request.method} {request.url.path}")
        await asyncio.sleep(0.01)  # so that the calls overlap, as they do on a network
        if request.url.path.endswith("/flow_runs/reports"):
            return httpx.Response(405, json={"detail": "Method Not Allowed"})
        run_id = request.url.path.split("/")[3]
        body = json.loads(request.content)
        if body.get("type") == "COMPLETED":
            return httpx.Response(409, json={"detail": "refused"})
        return httpx.Response(200, json=_run_json(run_id, body.get("type", "RUNNING")))


def test_against_a_server_without_the_batch_route_reports_go_one_by_one() -> None:
    server = OldServer()

    async def scenario() -> list[Any]:
        backend = NativeBackend(HttpClient("http://old/api", transport=httpx.MockTransport(server)))
        ids = [uuid.uuid4() for _ in range(6)]
        try:
            results = await asyncio.gather(
                *(
                    backend.set_state(
                        run_id,
                        StateProposal(type=StateType.COMPLETED if i == 4 else StateType.RUNNING),
                    )
                    for i, run_id in enumerate(ids)
                ),
                return_exceptions=True,
            )
            # Once is enough to know: no second try of the batch route.
            await asyncio.gather(*(backend.update_runner_info(r, {"pid": 1}) for r in ids))
            return results
        finally:
            await backend.aclose()

    results = asyncio.run(scenario())
    assert isinstance(results[4], Conflict)
    assert all(r.state.type is StateType.RUNNING for i, r in enumerate(results) if i != 4)
    assert sum(p.endswith("/flow_runs/reports") for p in server.paths) == 1
    assert sum(p.startswith("PATCH") for p in server.paths) == 6


def test_reports_the_server_cannot_take_are_spooled_each_on_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(native, "LOOP_RETRY_SECONDS", 0.05)

    async def down(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.01)
        return httpx.Response(503, json={"detail": "database locked"}, headers={"Retry-After": "0"})

    async def scenario() -> tuple[list[bool], Spool]:
        backend = NativeBackend(HttpClient("http://down/api", transport=httpx.MockTransport(down)))
        outbox = Outbox(backend, Spool(tmp_path / "spool"))
        try:
            delivered = await asyncio.gather(
                *(
                    outbox.set_state(uuid.uuid4(), StateProposal(type=StateType.COMPLETED))
                    for _ in range(5)
                )
            )
            return list(delivered), outbox.spool
        finally:
            await backend.aclose()

    delivered, spool = asyncio.run(scenario())
    assert delivered == [False] * 5
    assert len(spool) == 5 and len(spool.run_ids()) == 5
