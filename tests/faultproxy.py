"""A TCP fault proxy of our own: sits between agents and the server and misbehaves on demand.

Modes: ``pass`` forwards bytes; ``delay`` forwards them late; ``reset`` closes every connection
at once (new and open ones); ``blackhole`` accepts connections and forwards nothing (a network
partition: requests hang until the client's timeout). It runs its own event loop in a thread,
so a synchronous test can flip modes while agents talk through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
from collections.abc import Iterator

MODES = ("pass", "delay", "reset", "blackhole")


class FaultProxy:
    def __init__(self, target_port: int, *, seed: int = 0) -> None:
        self.target_port = target_port
        self.mode = "pass"
        self.delay_seconds = 0.2
        self.reset_probability = 0.0  # in "pass" mode: reset this share of connections
        self.port = 0
        self.connections = 0
        self.resets = 0
        self._random = random.Random(seed)
        self._loop = asyncio.new_event_loop()
        self._writers: set[asyncio.StreamWriter] = set()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="fault-proxy", daemon=True)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        self._ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def set_mode(self, mode: str) -> None:
        assert mode in MODES, mode
        self.mode = mode
        if mode in ("reset", "blackhole"):
            # Open keep-alive connections must feel the fault too, not only new ones.
            self._loop.call_soon_threadsafe(self._close_all)

    @contextlib.contextmanager
    def fault(self, mode: str) -> Iterator[None]:
        self.set_mode(mode)
        try:
            yield
        finally:
            self.set_mode("pass")

    def _close_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        server.close()
        self._close_all()
        # Let aborted transports and the server finish closing, then close the loop itself.
        self._loop.run_until_complete(asyncio.sleep(0.05))
        pending = asyncio.all_tasks(self._loop)
        for task in pending:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self._loop.run_until_complete(server.wait_closed())
        self._loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.mode == "reset" or (
            self.mode == "pass" and self._random.random() < self.reset_probability
        ):
            self.resets += 1
            writer.transport.abort()
            return
        self._writers.add(writer)
        if self.mode == "blackhole":
            return  # keep it open and silent
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.add(up_writer)
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )
        for w in (writer, up_writer):
            self._writers.discard(w)
            w.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            while self.mode == "blackhole":  # noqa: ASYNC110 - polled: flipped from another thread
                await asyncio.sleep(0.05)
            if self.mode == "delay":
                await asyncio.sleep(self.delay_seconds)
            writer.write(data)
            await writer.drain()
        with contextlib.suppress(OSError):
            writer.write_eof()
