"""The agent's side of Prefect 3's attempt-control channel against Prefect's own child side.

A real ``prefect._internal.control_listener`` (Prefect 3.9.1, from ``.prefect-venv``) in its own
process connects back with the token the agent registered, and must record "cancel" as its
intent and acknowledge it; that acknowledgement is what lets the agent send SIGTERM without the
engine taking it for a crash (agent/backends/prefect_control.py).
"""

from __future__ import annotations

import asyncio
import sys
import uuid

import pytest

from agent.backends.prefect_control import ControlChannel
from tests.conformance.harness import venv_or_skip

pytestmark = pytest.mark.integration

#: Prefect's child side as its engine runs it: connect once the SIGTERM bridge is armed, then
#: wait for an intent and say what it was.
CHILD = """
import time
from prefect._internal import control_listener
from prefect.utilities.engine import capture_sigterm
with capture_sigterm():  # arms the SIGTERM bridge and connects, as around a flow
    print("connected", flush=True)
    deadline = time.time() + 30
    while control_listener.get_intent() is None and time.time() < deadline:
        time.sleep(0.02)
    print("intent", control_listener.get_intent(), flush=True)
"""


async def _child(python: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        python, "-c", CHILD, env=env, stdout=asyncio.subprocess.PIPE
    )
    assert process.stdout is not None
    assert (await asyncio.wait_for(process.stdout.readline(), 60)).strip() == b"connected"
    return process


def test_prefect_s_listener_records_and_acknowledges_the_cancel_intent() -> None:
    python = str(venv_or_skip(".prefect-venv", "") / "bin" / "python")

    async def scenario() -> None:
        channel = ControlChannel()
        await channel.start()
        run, other = uuid.uuid4(), uuid.uuid4()
        try:
            env = channel.register(run)
            channel.register(other)  # registered, never connected: nothing to tell
            process = await _child(python, {"PATH": "/usr/bin:/bin"} | env)
            # Its connection is accepted a moment after it connected.
            for _ in range(200):
                if await channel.cancel(run):
                    break
                await asyncio.sleep(0.05)
            else:
                pytest.fail("the listener never acknowledged the cancel intent")
            out, _ = await asyncio.wait_for(process.communicate(), 30)
            assert out.strip() == b"intent cancel", out
            assert process.returncode == 0
            assert not await channel.cancel(other)
            assert not await channel.cancel(uuid.uuid4())  # never registered
        finally:
            await channel.aclose()

    asyncio.run(scenario())


def test_a_stale_token_is_not_a_session() -> None:
    python = str(venv_or_skip(".prefect-venv", "") / "bin" / "python")

    async def scenario() -> None:
        channel = ControlChannel()
        await channel.start()
        run = uuid.uuid4()
        try:
            stale = channel.register(run)
            channel.register(run)  # claimed again: a new token; the old one means nothing
            process = await _child(python, {"PATH": "/usr/bin:/bin"} | stale)
            await asyncio.sleep(0.5)  # let the stale connection be looked at and dropped
            assert not await channel.cancel(run)
            process.kill()
            await process.wait()
        finally:
            await channel.aclose()

    asyncio.run(scenario())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__]))
