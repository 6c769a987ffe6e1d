"""Where a webhook may go: every resolved address checked, and the connection aimed at the one
checked (a name that resolves elsewhere a moment later, DNS rebinding, changes nothing)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any, cast

import httpx
import pytest

from agent.server.notifications import NotificationConfig
from agent.server.webhooks import DeliveryResult, DeliveryWorker, check_destination

PUBLIC = "93.184.215.14"


def resolving(monkeypatch: pytest.MonkeyPatch, *answers: list[str]) -> list[str]:
    """getaddrinfo answers each list in turn (the last one from then on); [] fails."""
    asked: list[str] = []

    def fake(host: str, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        asked.append(host)
        ips = answers[min(len(asked), len(answers)) - 1]
        if not ips:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)) for ip in ips]

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    return asked


def attempt(url: str) -> tuple[DeliveryResult, list[httpx.Request]]:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(204)

    async def go() -> DeliveryResult:
        worker = DeliveryWorker(cast(Any, None), NotificationConfig(), "http://127.0.0.1:4200")
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return await worker._attempt(client, url, b"{}", {"X-Flowagent-Event": "TEST"})

    return asyncio.run(go()), sent


def test_the_request_goes_to_the_address_that_was_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    # Public when checked, loopback for whoever would resolve the name again.
    resolving(monkeypatch, [PUBLIC], ["127.0.0.1"])
    outcome, [request] = attempt("https://hooks.example:8443/hook?x=1")
    assert outcome.ok
    assert request.url.host == PUBLIC and request.url.port == 8443
    assert request.url.path == "/hook" and request.url.query == b"x=1"
    assert request.headers["Host"] == "hooks.example:8443"
    assert request.extensions["sni_hostname"] == "hooks.example"


def test_one_internal_address_among_public_ones_refuses_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    resolving(monkeypatch, [PUBLIC, "10.0.0.7"])
    outcome, sent = attempt("http://hooks.example/hook")
    assert sent == [] and not outcome.ok and not outcome.retryable
    assert outcome.error == (
        "refused: hooks.example is 10.0.0.7, a loopback, private, link-local or otherwise "
        "non-public address"
    )


def test_a_name_that_does_not_resolve_is_not_sent_but_retried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    resolving(monkeypatch, [])
    outcome, sent = attempt("http://hooks.example/hook")
    assert sent == [] and not outcome.ok and outcome.retryable
    assert outcome.error == "cannot resolve hooks.example"


@pytest.mark.parametrize(
    ("url", "refused"),
    [
        ("http://127.0.0.1/", True),
        ("http://[::1]/", True),
        ("http://[::ffff:10.0.0.1]/", True),
        ("http://100.64.0.1/", True),  # shared address space (carrier-grade NAT)
        ("http://169.254.169.254/", True),
        ("http://[fe80::1]/", True),
        ("http://[ff02::1]/", True),
        ("http://0.0.0.0/", True),
        (f"http://{PUBLIC}/", False),
        ("http://[2606:2800:21f:cb07:6820:80da:af6b:8b2c]/", False),
    ],
)
def test_which_literal_addresses_are_refused(url: str, refused: bool) -> None:
    assert (check_destination(url).refused is not None) is refused
