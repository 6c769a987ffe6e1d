"""A bound on request bodies, so that one request cannot take the server's memory.

Every body the API takes is parsed whole (JSON), so its size is the server's memory for it. The
largest legitimate bodies are an agent's batches (a log batch is about 1 MiB, a report batch at
most ``MAX_REPORTS`` small reports); parameters and env have their own, smaller limits in
``agent.models``. Anything larger is refused with a 413 before it is read into memory.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: The most a request body may hold.
MAX_REQUEST_BYTES = 16 * 1024 * 1024


class BodyLimit:
    """ASGI middleware: a 413 for a body over ``limit``, declared or streamed (chunked)."""

    def __init__(
        self, app: ASGIApp, limit: int = MAX_REQUEST_BYTES, exempt: tuple[str, ...] = ()
    ) -> None:
        """``exempt``: path prefixes whose routes stream the body to disk under a limit of
        their own (bundle uploads)."""
        self.app = app
        self.limit = limit
        self.exempt = exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or str(scope.get("path", "")).startswith(self.exempt):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(send, int(declared))
            return

        if declared is not None:
            await self.app(scope, receive, send)  # the server reads no more than declared
            return
        # A chunked body declares no length: read it here, up to the limit, then hand it on
        # whole (the app would parse it whole anyway). Refusing from inside the app's read is
        # no good: the framework turns any error there into a 400.
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.limit:
                await self._refuse(send, seen)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send, size: int) -> None:
        body = json.dumps(
            {
                "detail": (
                    f"request body too large: {size:,} bytes or more, at most "
                    f"{self.limit:,} are accepted; pass large data by reference (a path or a "
                    "URL) instead"
                )
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
