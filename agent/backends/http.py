"""The HTTP plumbing every backend shares: auth headers, error mapping and retries.

Third-party exceptions stop here: httpx errors and status codes become :mod:`agent.errors`
types, so nothing above this module knows httpx exists.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    stop_any,
)

from agent.errors import ApiError, AuthError, Conflict, NotFound, ServerUnavailable
from agent.models import utcnow

log = structlog.get_logger("agent.http")

RETRY_STATUSES = frozenset({429, 502, 503, 504})
#: Requests one client has in flight on its shared pool at most (heartbeats have their own).
#: Eight keep the embedded server busy (a request there takes a few milliseconds and writes are
#: serialised); with more, httpcore's per-request bookkeeping, which polls every kept-alive
#: connection, costs the agent more CPU than the extra concurrency gains.
MAX_IN_FLIGHT = 8


class RetryableError(ServerUnavailable):
    """A failure worth another try; carries the server's Retry-After when it gave one."""

    def __init__(
        self, message: str, *, retry_after: float | None = None, status_code: int | None = None
    ):
        super().__init__(message, status_code=status_code)
        self.retry_after = retry_after


def _retry_after(response: httpx.Response) -> float | None:
    raw = response.headers.get("Retry-After")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        return max(0.0, (parsedate_to_datetime(raw) - utcnow()).total_seconds())
    except (TypeError, ValueError):
        return None


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500] or response.reason_phrase
    if isinstance(body, dict) and "detail" in body:
        detail = body["detail"]
        return detail if isinstance(detail, str) else str(detail)
    return str(body)[:500]


def raise_for_status(response: httpx.Response) -> None:
    """Translate an error status into our error tree."""
    status = response.status_code
    if status < 400:
        return
    detail = _detail(response)
    where = f"{response.request.method} {response.request.url.path}"
    if status in RETRY_STATUSES:
        raise RetryableError(
            f"{where}: server busy ({status}): {detail}",
            retry_after=_retry_after(response),
            status_code=status,
        )
    if status in (401, 403):
        raise AuthError(
            f"the server refused our credentials ({status}): {detail}",
            status_code=status,
            hint="check AGENT_API_KEY (or AGENT_API_AUTH_STRING) matches the server's",
        )
    if status == 404:
        raise NotFound(detail, status_code=status)
    if status == 409:
        raise Conflict(detail, status_code=status)
    raise ApiError(f"{where} failed ({status}): {detail}", status_code=status)


class _Wait:
    """Jittered exponential backoff that honours the server's Retry-After."""

    def __init__(self, initial: float = 0.2, maximum: float = 10.0) -> None:
        self.initial = initial
        self.maximum = maximum

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RetryableError) and exc.retry_after is not None:
            return min(exc.retry_after, self.maximum * 3)
        backoff = min(self.maximum, self.initial * 2 ** (state.attempt_number - 1))
        return random.uniform(backoff / 2, backoff)


class HttpClient:
    """An httpx.AsyncClient with our auth, error mapping and retry policy.

    Given several base URLs (replicas of one server), it sends to one and moves to the next
    when that one cannot be reached (connection refused or cut, a timeout), before the retry:
    a dead replica costs a retry's backoff, not the retry budget. Answers (even 5xx) do not
    move it: a replica that answers is up, and its database is the others' too.
    """

    def __init__(
        self,
        base_url: str | Sequence[str],
        *,
        api_key: str | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float = 30.0,
        retry_for: float = 30.0,
        headers: dict[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        all_headers = {"User-Agent": "flowagent"} | (headers or {})
        if api_key:
            all_headers["Authorization"] = f"Bearer {api_key}"
        urls = [base_url] if isinstance(base_url, str) else list(base_url)
        self.base_urls = tuple(url.rstrip("/") for url in urls)
        if not self.base_urls:
            raise ValueError("HttpClient needs at least one base URL")
        self._current = 0
        self.retry_for = retry_for
        self._config: dict[str, Any] = {
            "headers": all_headers,
            "auth": httpx.BasicAuth(*auth) if auth else None,
            "timeout": httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            "transport": transport,
        }
        self._client = httpx.AsyncClient(
            **self._config,
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=MAX_IN_FLIGHT),
        )
        # Requests wait for a slot here (FIFO, O(1)) rather than in httpcore's pool: its queue
        # costs O(queued x connections) on every change, and once it holds more connections
        # than it keeps alive it closes idle ones straight away. With a thousand runs reporting
        # at once, that held the agent's event loop for seconds and made it reconnect endlessly.
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        # Heartbeats travel on a connection of their own (opened on first use): queued in the
        # shared pool behind a thousand runs' final reports, they arrived so late that the server
        # expired the agent's lease and crashed runs that had completed.
        self._priority: httpx.AsyncClient | None = None

    @property
    def base_url(self) -> str:
        """The URL requests go to now."""
        return self.base_urls[self._current]

    def _fail_over(self, failed: str) -> None:
        """``failed`` could not be reached: the next request goes to the next URL (unless
        another request moved on already)."""
        if len(self.base_urls) > 1 and self.base_url == failed:
            self._current = (self._current + 1) % len(self.base_urls)
            log.warning("api_fail_over", unreachable=failed, next=self.base_url)

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Any = None,
        content: bytes | None = None,
        timeout: float | None = None,
        retry: bool = True,
        retry_for: float | None = None,
        on_retry: Callable[[Exception, float], None] | None = None,
        priority: bool = False,
    ) -> httpx.Response:
        """Send one request; retry connection failures and 429/5xx when ``retry`` is set.

        Non-idempotent calls must either carry an idempotency key or pass ``retry=False``
        (then only failures where the request never left — connection refused — are retried).
        ``priority`` requests (heartbeats) bypass the queue of the shared connection pool.
        """
        kwargs: dict[str, Any] = {"json": json, "params": params}
        if content is not None:  # a bundle upload: raw bytes, not JSON
            kwargs["content"] = content
        if timeout is not None:
            kwargs["timeout"] = httpx.Timeout(timeout, connect=5.0)
        retry_on: tuple[type[BaseException], ...] = (RetryableError,) if retry else (_NotSent,)

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            delay = state.next_action.sleep if state.next_action else 0.0
            if exc is not None:
                log.warning(
                    "api_retry",
                    url=f"{self.base_url}/{path.lstrip('/')}",
                    error=str(exc),
                    attempt=state.attempt_number,
                    delay=round(delay, 2),
                )
                if on_retry is not None:
                    on_retry(exc if isinstance(exc, Exception) else Exception(str(exc)), delay)

        retrying = AsyncRetrying(
            retry=retry_if_exception_type(retry_on),
            wait=_Wait(),
            stop=stop_any(
                stop_after_delay(self.retry_for if retry_for is None else retry_for),
                stop_after_attempt(10_000),
            ),
            before_sleep=before_sleep,
            reraise=True,
        )
        client = self._priority_client() if priority else self._client
        async for attempt in retrying:
            with attempt:
                return await self._send_once(client, method, path, kwargs, retry)
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover

    def _priority_client(self) -> httpx.AsyncClient:
        if self._priority is None:
            self._priority = httpx.AsyncClient(
                **self._config,
                limits=httpx.Limits(max_connections=2, max_keepalive_connections=2),
            )
        return self._priority

    async def _send_once(
        self,
        client: httpx.AsyncClient,
        method: str,
        path: str,
        kwargs: dict[str, Any],
        retry: bool,
    ) -> httpx.Response:
        base = self.base_url
        url = f"{base}/{path.lstrip('/')}"
        try:
            if client is self._client:
                async with self._slots:
                    response = await client.request(method, url, **kwargs)
            else:
                response = await client.request(method, url, **kwargs)
        except httpx.ConnectError as exc:
            self._fail_over(base)
            raise _NotSent(self._unreachable(base, exc)) from exc
        except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
            self._fail_over(base)
            raise RetryableError(self._unreachable(base, exc)) from exc
        try:
            raise_for_status(response)
        except RetryableError:
            if not retry:
                raise ServerUnavailable(
                    f"server busy ({response.status_code})", status_code=response.status_code
                ) from None
            raise
        return response

    def _unreachable(self, base: str, exc: Exception) -> str:
        reason = type(exc).__name__ if not str(exc) else f"{type(exc).__name__}: {exc}"
        return f"cannot reach the API at {base} ({reason})"

    async def aclose(self) -> None:
        await self._client.aclose()
        if self._priority is not None:
            await self._priority.aclose()


class _NotSent(RetryableError):
    """The connection was refused: the request never reached the server, so any call may retry."""
