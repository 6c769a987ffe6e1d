"""The subprocess runner: each run is a child process of the agent, in its own session.

A Python entrypoint runs as ``<python> runners/bootstrap.py <entrypoint>``: the interpreter is
the deployment's (option ``python``) and needs nothing of ours installed; parameters go in as
``FLOWAGENT_PARAMETERS`` and the outcome comes back through ``FLOWAGENT_RESULT_FILE``. A command
deployment runs its argv as is. The child's environment is exactly ``spec.env`` plus those
variables and ``PYTHONUNBUFFERED=1``.

How a run ends (``wait()``):

    exit 0                 COMPLETED  "completed", result read from the result file
    exit N > 0             FAILED     "ValueError: boom" from the result file, else
                                      "exited with code N"; exit 2 from the bootstrap carries
                                      its entrypoint error ("entrypoint file not found: …")
    killed by signal N     CRASHED    "killed by signal SIGKILL" (exit_code is -N)

FAILED and CRASHED messages end with the last few stderr lines as context.

``wait()`` returns once the process is reaped and both pipes are drained. A background process
that inherited the pipes could keep them open forever, so after the main process exits they get
``drain_timeout`` seconds; then they are closed and that process is left alone (``terminate()``
still reaches it through the process group until ``wait()`` has returned).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import psutil
import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.errors import RunnerError
from runners.base import Outcome, OutputSink, RunHandle, Runner, RunResult, RunSpec
from runners.outcome import completed, ended, failure_message
from runners.process_tree import signal_tree, watch_exit

log = structlog.get_logger(__name__)

BOOTSTRAP = Path(__file__).resolve().with_name("bootstrap.py")
#: Longer lines are handed to the sink in pieces of at most this many bytes.
MAX_LINE_BYTES = 64 * 1024
#: How many stderr lines a FAILED or CRASHED message ends with.
STDERR_CONTEXT_LINES = 5
#: The bootstrap's exit code when the entrypoint could not be loaded.
EXIT_ENTRYPOINT_ERROR = 2


class SubprocessOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    python: str | None = Field(
        default=None,
        description="Python interpreter for entrypoint deployments: a path (relative paths start "
        "at the working directory) or a name looked up on the run's PATH. Default: the agent's.",
    )


class SubprocessRunner:
    """Runs each flow run as a child process in its own session and process group."""

    name: ClassVar[str] = "subprocess"
    Options: ClassVar[type[SubprocessOptions]] = SubprocessOptions

    def __init__(self, *, drain_timeout: float = 5.0) -> None:
        # After the run's main process exits, how long its output pipes may stay open: a
        # background process that inherited them could otherwise hold wait() forever.
        self.drain_timeout = drain_timeout

    async def start(self, spec: RunSpec, sink: OutputSink) -> SubprocessHandle:
        try:
            options = SubprocessOptions.model_validate(spec.options)
        except ValidationError as exc:
            raise RunnerError(f"invalid subprocess runner options: {exc}") from None
        if not spec.working_dir.is_dir():
            raise RunnerError(f"working directory not found: {spec.working_dir}")
        try:
            parameters = json.dumps(spec.parameters)
        except (TypeError, ValueError) as exc:
            raise RunnerError(f"the run's parameters are not JSON-serialisable: {exc}") from None

        env = {**spec.env, "FLOWAGENT_PARAMETERS": parameters}
        env.setdefault("PYTHONUNBUFFERED", "1")
        result_file: Path | None = None
        if spec.entrypoint is not None and spec.command is None:
            fd, name = tempfile.mkstemp(prefix="flowagent-result-", suffix=".json")
            os.close(fd)
            result_file = Path(name)
            env["FLOWAGENT_RESULT_FILE"] = name
            argv = [options.python or sys.executable, str(BOOTSTRAP), spec.entrypoint]
        elif spec.command and spec.entrypoint is None:
            argv = list(spec.command)
        else:
            raise RunnerError("a run needs exactly one of an entrypoint or a command")

        try:
            proc = _spawn(argv, env, spec.working_dir)
            handle = SubprocessHandle(proc, sink, result_file, self.drain_timeout)
            await handle._attach(name=f"run-{spec.run_id}")
        except BaseException:
            if result_file is not None:
                result_file.unlink(missing_ok=True)
            raise
        return handle


def _spawn(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    try:
        return subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            # Its own session and process group: signals to the agent's terminal do not reach
            # the run, and interrupt/terminate reach the whole run through the group.
            start_new_session=True,
        )
    except FileNotFoundError as exc:
        if exc.filename == os.fspath(cwd):  # removed since start() checked it
            raise RunnerError(f"working directory not found: {cwd}") from None
        hint = (
            None
            if "/" in argv[0]
            else f"looked up on the run's PATH: {env.get('PATH', os.defpath)}"
        )
        raise RunnerError(f"command not found: {argv[0]}", hint=hint) from None
    except PermissionError:
        raise RunnerError(f"cannot execute {argv[0]}: permission denied") from None
    except OSError as exc:
        if exc.errno == errno.E2BIG:
            raise RunnerError(
                "the run's environment or arguments are too large to start a process",
                hint="parameters travel in FLOWAGENT_PARAMETERS (at most 128 KiB); pass large "
                "data by reference (a path or URL) instead",
            ) from None
        raise RunnerError(f"cannot start {argv[0]}: {exc.strerror or exc}") from None


class SubprocessHandle:
    """One running child process. Created by :meth:`SubprocessRunner.start`."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        sink: OutputSink,
        result_file: Path | None,
        drain_timeout: float,
    ) -> None:
        self._proc = proc
        self._sink = sink
        self._result_file = result_file
        self._drain_timeout = drain_timeout
        # Not reaped yet, so the pid is still this process; psutil keeps its start time so a
        # later signal cannot reach a process that reused the pid.
        self._ps = psutil.Process(proc.pid)
        self._info: dict[str, Any] = {
            "pid": proc.pid,
            "pgid": proc.pid,  # start_new_session: the child leads its own group
            "create_time": self._ps.create_time(),
        }
        self._stderr_tail: deque[str] = deque(maxlen=STDERR_CONTEXT_LINES)
        self._sink_failed = False
        self._pipes: list[_LinePipe] = []
        self._done: asyncio.Task[RunResult] | None = None

    async def _attach(self, name: str) -> None:
        loop = asyncio.get_running_loop()
        exited = watch_exit(self._proc)
        try:
            for stream, pipe in (("stdout", self._proc.stdout), ("stderr", self._proc.stderr)):
                _, protocol = await loop.connect_read_pipe(
                    functools.partial(_LinePipe, stream, self._emit), pipe
                )
                self._pipes.append(protocol)
        except BaseException:
            # Cannot supervise it: do not leave it running unwatched.
            with contextlib.suppress(OSError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            await asyncio.shield(exited)
            for p in self._pipes:
                p.close()  # stops watching the pipe now; the file is closed just below
            for pipe in (self._proc.stdout, self._proc.stderr):
                if pipe is not None:
                    pipe.close()
            raise
        self._done = loop.create_task(self._supervise(exited), name=f"{name}-supervise")

    @property
    def info(self) -> dict[str, Any]:
        return dict(self._info)

    async def wait(self) -> RunResult:
        assert self._done is not None, "SubprocessHandle is created by SubprocessRunner.start"
        # Shielded: a caller giving up on waiting must not stop the supervision.
        return await asyncio.shield(self._done)

    async def interrupt(self) -> None:
        self._signal(signal.SIGTERM)

    async def terminate(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, sig: signal.Signals) -> None:
        if self._done is None or self._done.done():
            return  # the run is over: its pid and group may belong to someone else by now
        # Once the main process is reaped only its group is left to reach (output draining).
        root = self._ps if self._proc.returncode is None else None
        signal_tree(root, self._proc.pid, sig)

    async def _supervise(self, exited: asyncio.Future[int]) -> RunResult:
        try:
            code = await exited
            closed = [p.closed for p in self._pipes]
            _, still_open = await asyncio.wait(closed, timeout=self._drain_timeout)
            if still_open:
                log.warning("run_output_abandoned", pid=self._proc.pid, reason="pipes held open")
                for p in self._pipes:
                    p.close()
                await asyncio.wait(closed)
            return self._result(code, self._read_result_file())
        finally:
            if self._result_file is not None:
                self._result_file.unlink(missing_ok=True)

    def _emit(self, stream: str, raw: bytes) -> None:
        line = raw.decode("utf-8", errors="replace").removesuffix("\r")
        if stream == "stderr":
            self._stderr_tail.append(line)
        try:
            self._sink(stream, line)
        except Exception:
            # Keep draining whatever the sink does: a full pipe would block the run.
            if not self._sink_failed:
                self._sink_failed = True
                log.exception("run_output_sink_failed", pid=self._proc.pid)

    def _read_result_file(self) -> dict[str, Any] | None:
        if self._result_file is None:
            return None
        try:
            document = json.loads(self._result_file.read_text(encoding="utf-8") or "null")
        except (OSError, ValueError):
            return None  # killed while writing it, or never written (os._exit, a signal)
        return document if isinstance(document, dict) else None

    def _result(self, code: int, document: dict[str, Any] | None) -> RunResult:
        if code == 0:
            return completed(document)
        if code < 0:
            outcome, headline = Outcome.CRASHED, f"killed by signal {_signal_name(-code)}"
        else:
            outcome, headline = Outcome.FAILED, failure_message(code, document)
        return ended(outcome, headline, code, self._stderr_tail)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:  # real-time signals have no name
        return f"signal {number}"


class _LinePipe(asyncio.Protocol):
    """Reads one output pipe; each line (bytes, no newline) goes to ``emit(stream, line)``."""

    def __init__(self, stream: str, emit: Callable[[str, bytes], None]) -> None:
        self._stream = stream
        self._emit = emit
        self._buffer = bytearray()
        self._transport: asyncio.BaseTransport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._emit_lines(final=False)

    def connection_lost(self, exc: Exception | None) -> None:
        self._emit_lines(final=True)
        if not self.closed.done():
            self.closed.set_result(None)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _emit_lines(self, *, final: bool) -> None:
        buf, start = self._buffer, 0
        while True:
            newline = buf.find(b"\n", start)
            end = newline if newline >= 0 else len(buf)
            if end - start > MAX_LINE_BYTES:
                cut = _char_boundary(buf, start, start + MAX_LINE_BYTES)
                self._emit(self._stream, bytes(buf[start:cut]))
                start = cut
            elif newline >= 0:
                self._emit(self._stream, bytes(buf[start:newline]))
                start = newline + 1
            else:
                break
        if final and start < len(buf):
            self._emit(self._stream, bytes(buf[start:]))
            start = len(buf)
        del buf[:start]


def _char_boundary(buf: bytearray, start: int, cut: int) -> int:
    """Move ``cut`` back to the start of a UTF-8 character, so no piece splits one."""
    for i in range(cut, max(start, cut - 4), -1):
        if buf[i] & 0xC0 != 0x80:  # not a continuation byte
            return i
    return cut


if TYPE_CHECKING:  # mypy proves the classes meet the protocols third-party runners implement
    _runner: Runner = SubprocessRunner()
    _handle: type[RunHandle] = SubprocessHandle
