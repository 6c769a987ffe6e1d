"""Delivering notification events: the outbox worker that POSTs them to their webhooks.

The :class:`DeliveryWorker` is a background task of the server. It leases due rows of the
outbox (``notification_deliveries``; see :mod:`agent.server.notifications` for how they get
there), POSTs each JSON body with httpx, retries with exponential backoff (tenacity;
``Retry-After`` honoured; a 4xx other than 408/409/425/429 is final) and records every attempt.
The lease keeps two server processes from sending one event twice; an event whose worker died
goes out again when its lease runs out, and a worker that stops gives its leases back.

A body is signed when its notification has a secret: ``X-Flowagent-Signature: sha256=<hex>``,
the HMAC-SHA256 of the exact bytes sent, keyed with the secret.

Whoever may create a notification chooses where the server POSTs, so by default a webhook may
not target a loopback, private, link-local, multicast, unspecified or otherwise non-public
address (server-side request forgery: the server's own admin ports, a cloud's metadata service).
Every address the host name resolves to is checked when the notification is created and again
before each attempt, since DNS can change; redirects are not followed; and only the status code
of an answer is recorded, never its body. ``webhook_allow_private`` lifts the address check for
servers whose receivers are internal.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
import structlog
from sqlalchemy import select, update
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from agent import __version__
from agent.models import DeliveryStatus, utcnow
from agent.server.db import Database
from agent.server.notifications import NotificationConfig, queue_offline_events
from agent.server.orm import DeliveryAttemptRow, DeliveryRow, NotificationRow

log = structlog.get_logger("agent.server.webhooks")

SIGNATURE_HEADER = "X-Flowagent-Signature"
# A 4xx other than these is the receiver refusing the event: sending it again will not help.
_RETRIED_4XX = frozenset({408, 409, 425, 429})


@dataclass(frozen=True)
class Job:
    """One event to send, taken from the outbox under a lease."""

    delivery_id: int
    url: str
    secret: str | None
    event: str
    payload: dict[str, Any]
    attempts: int  # made before this lease (by a worker that died, say)


@dataclass(frozen=True)
class DeliveryResult:
    ok: bool
    status_code: int | None = None
    error: str | None = None
    retryable: bool = True
    retry_after: float | None = None


class _Retry(Exception):
    def __init__(self, outcome: DeliveryResult) -> None:
        super().__init__(outcome.error)
        self.outcome = outcome


def _not_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 is loopback too
    # is_global is false for private, loopback, link-local, reserved, shared (100.64/10)...;
    # multicast can be "global" and is refused all the same.
    return address.is_multicast or not address.is_global


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Destination:
    """Where a webhook URL leads now: why it is refused, else the addresses it resolves to."""

    host: str
    refused: str | None = None
    addresses: tuple[IPAddress, ...] = ()  # empty: the name did not resolve


def check_destination(url: str) -> Destination:
    """Resolve ``url``'s host and check every address it has (blocking: off the event loop)."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        return Destination("", refused=f"it is not a valid URL ({exc})")
    if not host:
        return Destination("", refused="it names no host")
    try:
        addresses: tuple[IPAddress, ...] = (ipaddress.ip_address(host),)
    except ValueError:
        try:
            found = socket.getaddrinfo(host, port or 443, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            return Destination(host)
        unique = dict.fromkeys(ipaddress.ip_address(str(i[4][0]).split("%")[0]) for i in found)
        addresses = tuple(unique)
    refused = sorted(str(a) for a in addresses if _not_public(a))
    if refused:
        why = (
            f"{host} is {', '.join(refused)}, a loopback, private, link-local or otherwise "
            "non-public address"
        )
        return Destination(host, refused=why, addresses=addresses)
    return Destination(host, addresses=addresses)


def refused_destination(url: str) -> str | None:
    """Why ``url`` may not be a webhook's destination (a non-public address), or None.

    A name that does not resolve is let through here: it is checked again, on the addresses of
    the moment, before every attempt (and not sent while it does not resolve).
    """
    return check_destination(url).refused


def pinned(url: str, address: IPAddress) -> tuple[str, dict[str, str], dict[str, Any]]:
    """``url`` aimed at the address that was checked, so that the connection cannot resolve the
    name again to somewhere else (DNS rebinding); the Host header and TLS (SNI, the
    certificate's name) still use the name."""
    original = httpx.URL(url)
    if original.host == str(address):
        return url, {}, {}
    aimed = original.copy_with(host=str(address))
    return (
        str(aimed),
        {"Host": original.netloc.decode("ascii")},
        {"sni_hostname": original.host},
    )


PRIVATE_HINT = (
    "webhooks may only target public addresses; to allow internal receivers, start the server "
    "with AGENT_WEBHOOK_ALLOW_PRIVATE=true (setting webhook_allow_private)"
)


def sign(secret: str, body: bytes) -> str:
    """The value of :data:`SIGNATURE_HEADER`: ``sha256=`` and the HMAC-SHA256 of the body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def render(job: Job, server_url: str) -> bytes:
    """The body as sent (and signed): the stored event plus links to this server."""
    payload = dict(job.payload)
    run = payload.get("flow_run")
    if isinstance(run, dict) and "id" in run:
        base = f"{server_url.rstrip('/')}/api/flow_runs/{run['id']}"
        payload["flow_run_url"] = base
        payload["logs_url"] = f"{base}/logs"
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


def take_due(db: Database, now: datetime, limit: int, lease: timedelta) -> list[Job]:
    """Lease up to ``limit`` due events of the outbox to this worker."""
    due = (
        DeliveryRow.status == DeliveryStatus.PENDING.value,
        DeliveryRow.next_attempt_at <= now,
    )
    with db.read() as session:  # the common case, nothing due, takes no write lock
        if session.scalar(select(DeliveryRow.id).where(*due).limit(1)) is None:
            return []
    with db.write() as session:
        rows = session.execute(
            select(DeliveryRow, NotificationRow)
            .join(NotificationRow, NotificationRow.id == DeliveryRow.notification_id)
            .where(*due)
            .order_by(DeliveryRow.next_attempt_at, DeliveryRow.id)
            .limit(limit)
        ).all()
        jobs = []
        for delivery, notification in rows:
            delivery.next_attempt_at = now + lease
            jobs.append(
                Job(
                    delivery.id,
                    notification.webhook_url,
                    notification.secret,
                    delivery.event,
                    dict(delivery.payload),
                    delivery.attempts,
                )
            )
        return jobs


def record_attempt(
    db: Database,
    delivery_id: int,
    attempt: int,
    outcome: DeliveryResult,
    final: DeliveryStatus | None,
    now: datetime,
) -> None:
    with db.write() as session:
        delivery = session.get(DeliveryRow, delivery_id)
        if delivery is None:
            return  # its notification was deleted meanwhile
        session.add(
            DeliveryAttemptRow(
                delivery_id=delivery_id,
                attempt=attempt,
                timestamp=now,
                ok=outcome.ok,
                status_code=outcome.status_code,
                error=outcome.error,
            )
        )
        delivery.attempts = attempt
        delivery.last_status_code = outcome.status_code
        delivery.last_error = outcome.error
        if final is not None:
            delivery.status = final.value
            delivery.finished = now


def release(db: Database, delivery_ids: list[int], now: datetime) -> None:
    """Give leased events back (the worker is stopping), so they go out without waiting."""
    with db.write() as session:
        session.execute(
            update(DeliveryRow)
            .where(
                DeliveryRow.id.in_(delivery_ids),
                DeliveryRow.status == DeliveryStatus.PENDING.value,
            )
            .values(next_attempt_at=now)
        )


async def post(
    client: httpx.AsyncClient,
    url: str,
    body: bytes,
    headers: dict[str, str],
    extensions: dict[str, Any] | None = None,
) -> DeliveryResult:
    try:
        response = await client.post(url, content=body, headers=headers, extensions=extensions)
    except httpx.HTTPError as exc:
        return DeliveryResult(False, error=f"{type(exc).__name__}: {exc}".rstrip(": "))
    code = response.status_code
    if 200 <= code < 300:
        return DeliveryResult(True, code)
    retry_after = response.headers.get("Retry-After")
    return DeliveryResult(
        False,
        code,
        # The status only: the body would carry whatever the target answers back to whoever
        # may read deliveries.
        error=f"HTTP {code} {response.reason_phrase}".rstrip(),
        retryable=code >= 500 or code in _RETRIED_4XX,
        retry_after=float(retry_after) if retry_after and retry_after.isdigit() else None,
    )


class DeliveryWorker:
    """The server's background sender of notification events (and OFFLINE watcher)."""

    def __init__(
        self,
        db: Database,
        config: NotificationConfig,
        server_url: str,
        clock: Callable[[], datetime] = utcnow,
        transport: httpx.AsyncBaseTransport | None = None,
        allow_private: bool = False,
    ) -> None:
        self.db = db
        self.allow_private = allow_private
        self.config = config
        self.server_url = config.server_url or server_url
        self.clock = clock
        self._transport = transport
        self._in_flight: set[int] = set()
        self._backoff = wait_exponential(
            multiplier=config.backoff_seconds, max=config.backoff_max_seconds
        )

    def _wait(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome is not None else None
        if isinstance(error, _Retry) and error.outcome.retry_after is not None:
            return min(error.outcome.retry_after, self.config.backoff_max_seconds)
        return float(self._backoff(state))

    async def deliver(self, client: httpx.AsyncClient, job: Job) -> DeliveryStatus:
        """Send one event until it is accepted, refused for good, or out of attempts."""
        body = render(job, self.server_url)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"flowagent/{__version__}",
            "X-Flowagent-Event": job.event,
            "X-Flowagent-Delivery": str(job.delivery_id),
        }
        if job.secret:
            headers[SIGNATURE_HEADER] = sign(job.secret, body)
        number = job.attempts
        left = max(1, self.config.max_attempts - job.attempts)
        retrying = AsyncRetrying(
            stop=stop_after_attempt(left),
            wait=self._wait,
            retry=retry_if_exception_type(_Retry),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    number += 1
                    outcome = await self._attempt(client, job.url, body, headers)
                    final: DeliveryStatus | None = None
                    if outcome.ok:
                        final = DeliveryStatus.DELIVERED
                    elif not outcome.retryable or number >= self.config.max_attempts:
                        final = DeliveryStatus.FAILED
                    await self.db.run(
                        record_attempt,
                        self.db,
                        job.delivery_id,
                        number,
                        outcome,
                        final,
                        self.clock(),
                    )
                    if final is None:
                        raise _Retry(outcome)
                    say = log.info if final is DeliveryStatus.DELIVERED else log.warning
                    say(
                        "notification_delivery_ended",
                        delivery_id=str(job.delivery_id),
                        on=job.event,
                        url=job.url,
                        status=final.value,
                        attempts=number,
                        error=outcome.error,
                    )
                    return final
        except _Retry:  # out of attempts (the count said otherwise): the row stays PENDING
            pass
        return DeliveryStatus.PENDING

    async def _attempt(
        self, client: httpx.AsyncClient, url: str, body: bytes, headers: dict[str, str]
    ) -> DeliveryResult:
        if self.allow_private:
            return await post(client, url, body, headers)
        where = await anyio.to_thread.run_sync(check_destination, url)
        if where.refused is not None:
            return DeliveryResult(False, error=f"refused: {where.refused}", retryable=False)
        if not where.addresses:
            # Not sent: httpx would resolve the name again, maybe to an internal address.
            return DeliveryResult(False, error=f"cannot resolve {where.host}")
        aimed, host, extensions = pinned(url, where.addresses[0])
        return await post(client, aimed, body, headers | host, extensions)

    async def _send(self, client: httpx.AsyncClient, job: Job) -> None:
        try:
            await self.deliver(client, job)
        except Exception:
            log.exception("notification_delivery_failed", delivery_id=str(job.delivery_id))
        finally:
            self._in_flight.discard(job.delivery_id)

    async def run(self) -> None:
        """Forever: queue OFFLINE events now and then, send what is due."""
        started = self.clock()
        last_offline_check: datetime | None = None
        timeout = httpx.Timeout(self.config.timeout_seconds)
        async with (
            httpx.AsyncClient(timeout=timeout, transport=self._transport) as client,
            anyio.create_task_group() as senders,
        ):
            try:
                while True:
                    now = self.clock()
                    try:
                        due_check = timedelta(seconds=self.config.offline_check_seconds)
                        if last_offline_check is None or now - last_offline_check >= due_check:
                            last_offline_check = now
                            await self.db.run(queue_offline_events, self.db, now, started)
                        free = self.config.concurrency - len(self._in_flight)
                        jobs = []
                        if free > 0:
                            jobs = await self.db.run(
                                take_due, self.db, now, free, self.config.lease
                            )
                    except Exception:
                        log.exception("notification_outbox_check_failed")
                        jobs = []
                    for job in jobs:
                        self._in_flight.add(job.delivery_id)
                        senders.start_soon(
                            self._send, client, job, name=f"notify-{job.delivery_id}"
                        )
                    await anyio.sleep(self.config.poll_seconds)
            finally:
                if self._in_flight:
                    with anyio.CancelScope(shield=True):
                        await self.db.run(release, self.db, sorted(self._in_flight), self.clock())
