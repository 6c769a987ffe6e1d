"""Telling Prefect 3's engine that the SIGTERM coming next is a cancel, not a crash.

Prefect 3.9's engine answers a bare SIGTERM by reporting CRASHED and running the flow's
``on_crashed`` hooks. Its worker avoids that with a loopback "attempt control" channel
(``prefect/runner/_control_channel.py``, child side ``prefect/_internal/control_listener.py``):
the engine is started with ``PREFECT__CONTROL_PORT`` and ``PREFECT__CONTROL_TOKEN``, connects
back once its flow runs and sends the token and a line feed; to cancel, the worker sends the
intent byte ``c``, the engine records it and answers ``a``, and only then does the worker send
SIGTERM. The engine then exits 0 without a state of its own, and the worker runs the
``on_cancellation`` hooks and proposes CANCELLED.

This is the version-one side of that protocol (the engine also sends a negotiation hello, which
a version-one peer ignores and which contains no ``a``). Prefect 2's engine knows no such
channel and never connects: :meth:`ControlChannel.cancel` answers False for its runs, as for a
3.x engine that has not reached its flow yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from dataclasses import dataclass, field
from uuid import UUID

import structlog

log = structlog.get_logger("agent.prefect")

#: How long the engine has to acknowledge a cancel intent (Prefect's worker waits about as long).
ACK_SECONDS = 2.0
#: A connection that does not name its token by then is dropped.
HELLO_SECONDS = 5.0

CANCEL = b"c"
ACK = b"a"


@dataclass
class _Session:
    token: str
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


class ControlChannel:
    """One loopback listener for all of an agent's runs; one token per run."""

    def __init__(self) -> None:
        self._server: asyncio.Server | None = None
        self._sessions: dict[UUID, _Session] = {}
        self._by_token: dict[str, UUID] = {}

    async def start(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)

    @property
    def port(self) -> int:
        assert self._server is not None, "ControlChannel.start() first"
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def register(self, run_id: UUID) -> dict[str, str]:
        """The engine's environment that lets it connect back for this run."""
        self.unregister(run_id)
        token = secrets.token_urlsafe(24)
        self._sessions[run_id] = _Session(token)
        self._by_token[token] = run_id
        return {"PREFECT__CONTROL_PORT": str(self.port), "PREFECT__CONTROL_TOKEN": token}

    def unregister(self, run_id: UUID) -> None:
        session = self._sessions.pop(run_id, None)
        if session is not None:
            self._by_token.pop(session.token, None)
            session.done.set()

    async def cancel(self, run_id: UUID) -> bool:
        """Send the cancel intent; True once the engine acknowledged it (it will then take the
        SIGTERM as a cancel and exit 0). False: no engine listening for this run."""
        session = self._sessions.get(run_id)
        if session is None or session.reader is None or session.writer is None:
            return False
        try:
            session.writer.write(CANCEL)
            await session.writer.drain()
            async with asyncio.timeout(ACK_SECONDS):
                while True:
                    data = await session.reader.read(64)
                    if not data:
                        return False
                    if ACK in data:
                        return True
        except (TimeoutError, OSError) as exc:
            log.info("cancel_intent_not_acknowledged", run_id=str(run_id), error=repr(exc))
            return False

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session: _Session | None = None
        try:
            async with asyncio.timeout(HELLO_SECONDS):
                line = await reader.readline()
            run_id = self._by_token.get(line.strip().decode("ascii", "replace"))
            session = self._sessions.get(run_id) if run_id is not None else None
            if session is None:
                return  # an unknown or stale token: nothing of ours
            session.reader, session.writer = reader, writer
            # Held open while the run lives: the engine treats a closed channel as no channel.
            await session.done.wait()
        except (TimeoutError, OSError):
            return
        finally:
            if session is not None:
                session.reader = session.writer = None
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def aclose(self) -> None:
        for run_id in list(self._sessions):
            self.unregister(run_id)
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
