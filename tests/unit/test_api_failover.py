"""Several API URLs: settings keep them in order; the HTTP client moves to the next one when
the one it uses cannot be reached, and stays where it is when a server answers (even 503)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from agent.backends.http import HttpClient
from agent.config import load_settings
from agent.errors import ConfigError, ServerUnavailable


def test_api_url_takes_several_urls(tmp_path: Path) -> None:
    settings = load_settings(
        env={"AGENT_API_URL": "http://a:1/api/, http://b:2/api"}, home=tmp_path
    )
    assert settings.api_urls == ("http://a:1/api", "http://b:2/api")
    flags = load_settings(
        flags={"api_url": ["http://a/api", "http://b/api"]}, env={}, home=tmp_path
    )
    assert flags.api_urls == ("http://a/api", "http://b/api")
    with pytest.raises(ConfigError, match="must start with http"):
        load_settings(env={"AGENT_API_URL": "http://a/api,ftp://b"}, home=tmp_path)


def serve(dead: set[str], hits: list[str], status: int = 200) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        host = request.url.host
        hits.append(host)
        if host in dead:
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(status, json={"host": host})

    return httpx.MockTransport(handler)


def test_moves_on_when_a_replica_cannot_be_reached() -> None:
    hits: list[str] = []

    async def scenario() -> None:
        http = HttpClient(
            ["http://a/api", "http://b/api"], retry_for=5, transport=serve({"a"}, hits)
        )
        try:
            first = await http.request("GET", "health", retry=False)
            assert first.json() == {"host": "b"}
            assert http.base_url == "http://b/api"
            second = await http.request("POST", "x", retry=False)
            assert second.json() == {"host": "b"}  # it stays on the one that works
        finally:
            await http.aclose()

    asyncio.run(scenario())
    assert hits == ["a", "b", "b"]


def test_an_answer_does_not_move_it() -> None:
    hits: list[str] = []

    async def scenario() -> None:
        http = HttpClient(
            ["http://a/api", "http://b/api"], retry_for=5, transport=serve(set(), hits, 503)
        )
        try:
            with pytest.raises(ServerUnavailable):
                await http.request("GET", "health", retry=False)
            assert http.base_url == "http://a/api"
        finally:
            await http.aclose()

    asyncio.run(scenario())
    assert hits == ["a"]


def test_a_heartbeat_listing_runs_is_sent_once_not_retried_late() -> None:
    """The server takes a run a heartbeat does not list for one the agent dropped: a retry of a
    beat composed before a claim, arriving seconds later, would drop the claimed run. The next
    beat, composed afresh, is the retry."""
    from uuid import uuid4

    from agent.backends.native import NativeBackend
    from agent.models import Heartbeat

    hits: list[str] = []
    backend = NativeBackend(HttpClient("http://s/api", transport=serve(set(), hits, status=503)))
    beat = Heartbeat(name="a", work_queue_id=uuid4(), run_ids=[])

    async def scenario() -> None:
        try:
            with pytest.raises(ServerUnavailable):
                await backend.heartbeat(beat)
        finally:
            await backend.http.aclose()

    asyncio.run(scenario())
    assert hits == ["s"]
