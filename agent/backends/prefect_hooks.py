"""A flow's ``on_cancellation`` and ``on_crashed`` hooks, run by the agent as Prefect's worker
runs them, and what a killed flow printed.

Prefect 3.9's worker starts the engine with ``PREFECT__ENABLE_CANCELLATION_AND_CRASHED_HOOKS=false``
and runs those two kinds of hooks itself, once the flow's process is gone
(``prefect/runner/_cancellation_manager.py``: kill, then ``on_cancellation``, then CANCELLED;
``prefect/runner/_flow_run_executor.py``: a process that exits non-zero without a final state
is proposed CRASHED, then ``on_crashed``). Each runs in a process of its own that loads the flow
from the run (``load_flow_from_flow_run``, the deployment's pull steps included) in the run's
working directory (``prefect/runner/_workspace_hook_runner.py``), and logs "Running hook ..." to
the run's logs. The engine keeps the hooks of the crashes it detects itself.

The agent does the same: :class:`Hooks` runs :data:`HOOK_SCRIPT` with the engine's interpreter,
working directory and environment, but after CANCELLED rather than before it (loading the flow
takes seconds; a cancel is not held back by them). Prefect 2.20's engine runs both kinds itself unless told
not to, and ``prefect agent`` leaves them to it; the agent lets 2.x engines keep the hooks of
crashes they detect, and runs the rest (the engine cannot: it was killed) the same way.

A flow's output reaches Prefect only through its engine's batched log shipping (every 2 s),
so a ``kill -9`` loses what was not yet sent, and ``print`` without ``log_prints`` is never
sent at all. :class:`Output` keeps the last lines each flow wrote to stdout/stderr; when the
agent, not the engine, ends a run (a crash, a kill), they are shipped as the run's logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal
from uuid import UUID

import structlog

from agent.backends.http import HttpClient
from agent.errors import FlowAgentError
from agent.models import LogLineCreate, LogStream

log = structlog.get_logger("agent.prefect")

HookKind = Literal["cancellation", "crashed"]

#: The environment variable that hands cancellation and crash hooks to the worker (3.x; 2.x
#: reads it too, but its own agent never sets it).
HOOKS_SWITCH = "PREFECT__ENABLE_CANCELLATION_AND_CRASHED_HOOKS"
#: Hooks that hang are stopped: the run's final state waits for them.
HOOK_TIMEOUT_SECONDS = 120.0
#: Lines of a flow's output kept for shipping if the agent has to end its run, and the most
#: characters they may hold together: a line may be 64 KiB, and a run's output must not cost the
#: agent more than its log shipper's own bound does (agent/logs.py).
OUTPUT_LINES = 2000
OUTPUT_CHARS = 1024 * 1024
#: The logger name they are shipped under, and how many go in one request.
OUTPUT_LOGGER = "flowagent.flow-output"
LOG_BATCH = 200

#: Run as ``python -c HOOK_SCRIPT KIND RUN_ID MESSAGE`` with the engine's interpreter: reads
#: the run, loads its flow as the worker does, and calls the hooks of KIND with the state the
#: worker passes (CANCELLING with MESSAGE; the run's CRASHED state). Works on Prefect 2 and 3.
HOOK_SCRIPT = r"""
import asyncio, inspect, sys
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.logging.loggers import flow_run_logger
try:
    from prefect.flows import load_flow_from_flow_run
except ImportError:  # Prefect 2
    from prefect.deployments import load_flow_from_flow_run
from prefect.states import Cancelling


async def main(kind, run_id, message):
    async with get_client() as client:
        flow_run = await client.read_flow_run(UUID(run_id))
        try:
            flow = await load_flow_from_flow_run(flow_run=flow_run)
        except Exception:
            flow_run_logger(flow_run).warning(
                "Runner failed to retrieve flow to execute on_%s hooks for flow run %r.",
                kind, flow_run.id, exc_info=True,
            )
            return 1
        state = Cancelling(message=message) if kind == "cancellation" else flow_run.state
        hooks = getattr(flow, f"on_{kind}_hooks", None)
        if hooks is None:  # Prefect 2
            hooks = getattr(flow, f"on_{kind}", None)
        logger = flow_run_logger(flow_run, flow)
        for hook in hooks or []:
            name = getattr(hook, "__name__", None) or repr(hook)
            try:
                logger.info("Running hook %r in response to entering state %r", name, state.name)
                result = hook(flow=flow, flow_run=flow_run, state=state)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                logger.error("An error was encountered while running hook %r", name, exc_info=True)
            else:
                logger.info("Hook %r finished running successfully", name)
    return 0


code = asyncio.run(main(*sys.argv[1:4]))
from prefect.logging.handlers import APILogWorker
APILogWorker.drain_all(timeout=5)
sys.exit(code)
"""


@dataclass(frozen=True)
class Launch:
    """What a run's engine was started with: its hooks run with the same."""

    python: str
    cwd: str
    env: Mapping[str, str]


class Hooks:
    """Runs a run's cancellation or crash hooks in a process of their own."""

    def __init__(self, timeout: float = HOOK_TIMEOUT_SECONDS) -> None:
        self.timeout = timeout
        self.launches: dict[UUID, Launch] = {}

    def remember(self, run_id: UUID, launch: Launch) -> None:
        self.launches[run_id] = launch

    def forget(self, run_id: UUID) -> None:
        self.launches.pop(run_id, None)

    async def run(self, kind: HookKind, run_id: UUID, message: str | None = None) -> bool:
        """Run the hooks of ``kind``; False when they could not be (no launch of this agent's
        life, no working directory, a failure of the process). Never raises: a hook's failure
        must not keep the run from its final state."""
        launch = self.launches.get(run_id)
        if launch is None:
            log.warning("hooks_not_run", run_id=str(run_id), kind=kind, reason="not launched here")
            return False
        env = dict(os.environ) | dict(launch.env) | {"PREFECT__FLOW_RUN_ID": str(run_id)}
        for key in ("PREFECT__CONTROL_PORT", "PREFECT__CONTROL_TOKEN"):
            env.pop(key, None)
        try:
            process = await asyncio.create_subprocess_exec(
                launch.python,
                "-c",
                HOOK_SCRIPT,
                kind,
                str(run_id),
                message or "Flow run was cancelled.",
                cwd=launch.cwd,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:  # the working directory or the interpreter is gone
            log.warning("hooks_not_run", run_id=str(run_id), kind=kind, error=str(exc))
            return False
        try:
            out, _ = await asyncio.wait_for(process.communicate(), self.timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
            log.warning("hooks_timed_out", run_id=str(run_id), kind=kind, seconds=self.timeout)
            return False
        tail = out.decode(errors="replace")[-2000:]
        if process.returncode != 0:
            log.warning(
                "hooks_failed",
                run_id=str(run_id),
                kind=kind,
                exit_code=process.returncode,
                output=tail,
            )
            return False
        log.info("hooks_ran", run_id=str(run_id), kind=kind)
        return True


class Output:
    """The last :data:`OUTPUT_LINES` lines each running flow wrote to stdout and stderr, at
    most :data:`OUTPUT_CHARS` characters of them."""

    def __init__(self, lines: int = OUTPUT_LINES, chars: int = OUTPUT_CHARS) -> None:
        self.lines = lines
        self.chars = chars
        self._kept: dict[UUID, deque[LogLineCreate]] = {}
        self._size: dict[UUID, int] = {}

    def keep(self, run_id: UUID, lines: Sequence[LogLineCreate]) -> None:
        kept = self._kept.setdefault(run_id, deque())
        size = self._size.get(run_id, 0)
        for line in lines:
            if line.stream is not LogStream.AGENT:
                kept.append(line)
                size += len(line.line)
        while kept and (len(kept) > self.lines or size > self.chars):
            size -= len(kept.popleft().line)
        self._size[run_id] = size

    def take(self, run_id: UUID) -> list[LogLineCreate]:
        """What the flow wrote, now forgotten."""
        self._size.pop(run_id, None)
        return list(self._kept.pop(run_id, ()))

    def forget(self, run_id: UUID) -> None:
        self._kept.pop(run_id, None)
        self._size.pop(run_id, None)

    async def ship(self, http: HttpClient, run_id: UUID) -> None:
        """What the flow wrote, as the run's logs, when its engine could not ship it; a failure
        loses the lines, never the run's report."""
        logs = [
            {
                "flow_run_id": str(run_id),
                "level": logging.ERROR if line.stream is LogStream.STDERR else logging.INFO,
                "message": line.line,
                "name": OUTPUT_LOGGER,
                "timestamp": line.timestamp.isoformat(),
            }
            for line in self.take(run_id)
        ]
        try:
            for start in range(0, len(logs), LOG_BATCH):
                await http.request("POST", "logs/", json=logs[start : start + LOG_BATCH])
        except FlowAgentError as exc:
            log.warning("flow_output_not_sent", run_id=str(run_id), error=str(exc))
