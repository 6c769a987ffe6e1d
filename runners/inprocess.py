"""The in-process runner: the flow function runs inside the agent's own process.

For small trusted flows where starting a process would cost more than the flow. The entrypoint is
imported the way the bootstrap does it (from the deployment's working directory, a file loaded
afresh for every run); an ``async def`` flow runs as a task on the agent's event loop, any other
in a thread of its own.

Output is captured per run without touching the agent's own: ``sys.stdout``/``sys.stderr`` are
replaced once by proxies that look up the current run in a context variable (set for the run's
task and copied into its threads), and so is :data:`logging.lastResort`, the handler Python uses
while nobody configured logging (see :class:`_RunLogHandler`). Lines outside any run go where they always went.

How a run ends (``wait()``):

    returned                COMPLETED  the return value is the result
    raised                  FAILED     "ValueError: boom" + the last stderr lines (the traceback
                                       was written to the run's stderr)
    entrypoint unusable     FAILED     "entrypoint file not found: …", as the bootstrap says it
    sys.exit(N)             COMPLETED for 0/None, else FAILED "exited with code N"
    interrupted (async)     CRASHED    "cancelled": interrupt and terminate cancel the task
    terminated (sync)       CRASHED    a thread cannot be killed: the run is marked over at once,
                                       the slot frees, and the thread is left running

What it does not isolate (see docs/RUNNERS.md): memory, environment, working directory, modules,
signal handlers; a crash of the flow is a crash of the agent.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import io
import json
import logging
import os
import sys
import threading
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, TextIO, TypeVar

import structlog

from runners import bootstrap, threads
from runners.base import (
    HeldRunHandle,
    Outcome,
    OutputSink,
    Runner,
    RunResult,
    RunSpec,
)
from runners.errors import RunnerError
from runners.output import Outlet, ThreadHandoff, cut_lines
from runners.threads import in_thread, settle_result

log = structlog.get_logger(__name__)

T = TypeVar("T")
#: Longer lines are handed to the sink in pieces of at most this many characters.
_OUR_FILES = {__file__, bootstrap.__file__, threads.__file__}

#: The context callbacks from a run's threads run in: no run, so their output is the agent's.
_NO_RUN = contextvars.Context()
_current: contextvars.ContextVar[_RunOutput | None] = contextvars.ContextVar(
    "flowagent_inprocess_run", default=None
)


class InProcessRunner:
    """Runs flow functions inside the agent: async ones as tasks, sync ones in threads."""

    name: ClassVar[str] = "inprocess"
    # A held run's flow is loaded at once and called once released.
    starts_held: ClassVar[bool] = True

    async def start(self, spec: RunSpec, sink: OutputSink) -> InProcessHandle:
        if spec.entrypoint is None or spec.command is not None:
            raise RunnerError(
                "the in-process runner runs Python entrypoints only, not commands",
                hint="use the subprocess or docker runner for command deployments",
            )
        if not spec.working_dir.is_dir():
            raise RunnerError(f"working directory not found: {spec.working_dir}")
        install_capture()
        handle = InProcessHandle(spec, _RunOutput(asyncio.get_running_loop(), sink))
        ignored = sorted(
            k
            for k, v in spec.env.items()
            # FLOWAGENT_*: what the agent tells every run (run id…), not the deployment's env.
            if not k.startswith("FLOWAGENT_") and os.environ.get(k) != v
        )
        if ignored:
            handle._output.write(
                "stderr",
                f"flowagent: in-process flows share the agent's environment; not applied: "
                f"{', '.join(ignored)}\n",
            )
        handle._start()
        return handle


class InProcessHandle:
    """One flow running inside the agent. Created by :meth:`InProcessRunner.start`."""

    def __init__(self, spec: RunSpec, output: _RunOutput) -> None:
        self._spec = spec
        self._output = output
        self._loop = asyncio.get_running_loop()
        self._done: asyncio.Future[RunResult] = self._loop.create_future()
        self._task: asyncio.Task[RunResult] | None = None
        # "loading" and "sync" run in a thread, which nothing can stop; "async" is a task.
        self._mode = "loading"
        self._module = f"__flowagent_run_{spec.run_id.hex}__"
        self._released = asyncio.Event()

    def _start(self) -> None:
        context = contextvars.copy_context()
        context.run(_current.set, self._output)
        self._task = self._loop.create_task(
            self._main(), name=f"run-{self._spec.run_id}-inprocess", context=context
        )
        self._task.add_done_callback(self._task_done)

    @property
    def info(self) -> dict[str, Any]:
        assert self._task is not None
        # Not "pid": nothing may take the agent's own process for the run's and signal it.
        return {"agent_pid": os.getpid(), "in_process": True, "task": self._task.get_name()}

    async def wait(self) -> RunResult:
        # Shielded: a caller giving up on waiting must not cancel the flow.
        return await asyncio.shield(self._done)

    async def release(self) -> None:
        self._released.set()

    async def interrupt(self) -> None:
        if self._done.done() or self._task is None:
            return
        if self._mode == "async":
            self._task.cancel("interrupted")
        else:
            log.warning("inprocess_interrupt_ignored", run_id=str(self._spec.run_id))

    async def terminate(self) -> None:
        if self._done.done() or self._task is None:
            return
        if self._mode == "async":
            self._task.cancel("terminated")
            for _ in range(3):  # let the cancellation reach the flow; it may be done then
                await asyncio.sleep(0)
            if self._done.done() or self._task.done():
                return
            message = "the in-process flow ignored cancellation; it keeps running in the agent"
        else:
            message = "could not stop a sync in-process flow; its thread keeps running"
        log.warning("inprocess_run_abandoned", run_id=str(self._spec.run_id), mode=self._mode)
        self._finish(RunResult(Outcome.CRASHED, message))
        # Never wait for the thread: its late result has nowhere to go.
        self._task.cancel()

    async def _main(self) -> RunResult:
        spec = self._spec
        try:
            func = await in_thread(self._load, f"load-{spec.run_id}", settle_in=_NO_RUN)
            if spec.held:
                self._mode = "async"  # waiting on the loop: an interrupt can stop it
                await self._released.wait()
            if _is_async(func):
                self._mode = "async"
                result = await func(**spec.parameters)
            else:
                self._mode = "sync"
                result = await in_thread(
                    lambda: func(**spec.parameters), f"flow-{spec.run_id}", settle_in=_NO_RUN
                )
                if inspect.isawaitable(result):  # a sync wrapper around a coroutine
                    self._mode = "async"
                    result = await result
        except bootstrap.EntrypointError as exc:
            self._output.write("stderr", f"flowagent: {exc}\n")
            return RunResult(Outcome.FAILED, str(exc))
        except SystemExit as exc:
            # Caught here: on the loop it would stop the agent, as Python's own exit would.
            if exc.code in (None, 0):
                return _completed(None)
            code = exc.code
            headline = f"exited with code {code}" if isinstance(code, int) else str(code)
            return self._failed(exc, headline, code if isinstance(code, int) else 1)
        except (Exception, KeyboardInterrupt) as exc:
            return self._failed(exc, _headline(exc))
        return _completed(result)

    def _load(self) -> Callable[..., Any]:
        spec, base = self._spec, str(self._spec.working_dir.resolve())
        assert spec.entrypoint is not None
        entries = [base]
        target = spec.entrypoint.rpartition(":")[0]
        if target.endswith(".py") or "/" in target:
            entries.append(os.path.dirname(os.path.abspath(os.path.join(base, target))))
        # Appended, not prepended as the bootstrap does: a flow's modules must not shadow the
        # agent's own. The bootstrap leaves entries already on sys.path where they are.
        for entry in entries:
            if entry not in sys.path:
                sys.path.append(entry)
        func = bootstrap.load_function(spec.entrypoint, base, self._module)
        bootstrap.check_parameters(func, spec.parameters)
        return func

    def _failed(self, exc: BaseException, headline: str, exit_code: int | None = None) -> RunResult:
        if not isinstance(exc, SystemExit):  # an exit is not an error: no traceback
            tb = exc.__traceback__
            while tb is not None and tb.tb_frame.f_code.co_filename in _OUR_FILES:
                tb = tb.tb_next  # our frames are noise: the user's code starts below them
            lines = traceback.format_exception(type(exc), exc, tb)
            self._output.write("stderr", "".join(lines))
        self._output.close()  # so the tail below holds the whole traceback
        tail = list(self._output.stderr_tail)
        if tail and tail[-1] == headline:
            tail.pop()  # the traceback's last line says what the headline already says
        message = headline + ("\nlast lines of stderr:\n" + "\n".join(tail) if tail else "")
        return RunResult(Outcome.FAILED, message, exit_code)

    def _task_done(self, task: asyncio.Task[RunResult]) -> None:
        if task.cancelled():
            result = RunResult(Outcome.CRASHED, "cancelled")
        elif (exc := task.exception()) is not None:  # a bug of ours, not the flow's
            result = RunResult(Outcome.CRASHED, f"in-process runner error: {exc!r}")
        else:
            result = task.result()
        # Each run loads its flow file afresh: do not keep one module per run forever.
        sys.modules.pop(self._module, None)
        self._finish(result)

    def _finish(self, result: RunResult) -> None:
        if self._done.done():
            return
        self._output.close()
        # Lines the flow printed are queued on the loop already; the result goes in behind them,
        # so wait() returns only once they have all reached the sink.
        self._loop.call_soon(settle_result, self._done, result)


def _completed(result: Any) -> RunResult:
    try:
        json.dumps(result)
    except (TypeError, ValueError, RecursionError):
        message = f"completed; the result is not JSON-serialisable: {result!r}"
        return RunResult(Outcome.COMPLETED, message[:500])
    return RunResult(Outcome.COMPLETED, "completed", None, result)


def _headline(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _is_async(func: Callable[..., Any]) -> bool:
    # An object whose __call__ is async counts too: calling it returns a coroutine.
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(type(func).__call__)


class _RunOutput:
    """One run's output: written from any of its threads, handed to its sink on the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sink: OutputSink) -> None:
        # Delivered outside the run's context: whatever the sink prints is the agent's.
        self._handoff = ThreadHandoff(loop, self._deliver, sink, context=_NO_RUN)
        self._lock = threading.Lock()  # the run's own threads may print at once
        self._partial = {"stdout": "", "stderr": ""}
        self._closed = False
        self._outlet = Outlet(sink)
        self.stderr_tail = self._outlet.stderr_tail

    def write(self, stream: str, text: str) -> None:
        # Outside the lock: close() takes it on the loop, which is what makes room. A write's
        # lines then go out whole, so it may overdraw the limit by its own size, at most.
        self._handoff.wait_for_room()
        with self._lock:
            if self._closed:
                return  # an abandoned thread still printing: the run is over
            lines, rest = cut_lines(self._partial[stream] + text)
            self._partial[stream] = rest
            for line in lines:
                self._emit(stream, line)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            for stream, rest in self._partial.items():
                if rest:
                    self._emit(stream, rest)
            self._closed = True
        self._handoff.close()

    def _emit(self, stream: str, line: str) -> None:
        line = line.removesuffix("\r")
        self._outlet.note(stream, line)
        self._handoff.put(stream, line)

    def _deliver(self, stream: str, line: str) -> None:
        self._outlet.deliver(stream, line)


class _RunStream(io.TextIOBase):
    """Stands in for sys.stdout or sys.stderr: the current run's output, or the original."""

    def __init__(self, stream: str, original: TextIO | None) -> None:
        super().__init__()
        self._stream = stream
        self.original = original

    def write(self, text: str) -> int:
        run = _current.get()
        if run is not None:
            run.write(self._stream, text)
        elif self.original is not None:
            return self.original.write(text)
        return len(text)

    def flush(self) -> None:
        if _current.get() is None and self.original is not None:
            self.original.flush()

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        run = _current.get()
        return run is None and self.original is not None and self.original.isatty()

    def fileno(self) -> int:
        # Child processes and os.write() bypass the proxy: they reach the agent's own stream.
        if self.original is None:
            raise io.UnsupportedOperation("fileno")
        return self.original.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.original, "encoding", None) or "utf-8"

    def __getattr__(self, name: str) -> Any:
        if name == "original":  # not set yet: never recurse
            raise AttributeError(name)
        return getattr(self.original, name)


class _RunLogHandler(logging.Handler):
    """Sends log records made inside a run to that run's stderr; others to ``fallback``.

    It stands in for :data:`logging.lastResort`, which Python uses while no handler is configured
    (the agent configures structlog only), so that a flow's ``logging.basicConfig()`` still
    works: its handler writes to the proxied sys.stderr, routed per run as well. Only when the
    root logger already has handlers (an embedding application, pytest) is a second instance
    added there, because those handlers would otherwise take the run's records for themselves.
    """

    def __init__(self, fallback: logging.Handler | None, level: int) -> None:
        super().__init__(level)
        self.fallback = fallback

    def emit(self, record: logging.LogRecord) -> None:
        run = _current.get()
        if run is None:
            if self.fallback is not None:
                self.fallback.handle(record)
        elif not _reaches_a_run_stream(record):  # else it is in the run's output already
            run.write("stderr", self.format(record) + "\n")


def _reaches_a_run_stream(record: logging.LogRecord) -> bool:
    """Whether a handler on the record's way up writes to one of our proxies."""
    logger: logging.Logger | None = logging.getLogger(record.name)
    while logger is not None:
        for handler in logger.handlers:
            stream = getattr(handler, "stream", None)
            if isinstance(stream, _RunStream) and record.levelno >= handler.level:
                return True
        logger = logger.parent if logger.propagate else None
    return False


_install_lock = threading.Lock()
_ON_ROOT = _RunLogHandler(None, logging.NOTSET)


def install_capture() -> None:
    """Put the per-run proxies in place; again if someone replaced them since (pytest does)."""
    with _install_lock:
        if not isinstance(sys.stdout, _RunStream):
            sys.stdout = _RunStream("stdout", sys.stdout)
        if not isinstance(sys.stderr, _RunStream):
            sys.stderr = _RunStream("stderr", sys.stderr)
        if not isinstance(logging.lastResort, _RunLogHandler):
            # Python's own last resort lets WARNING and up through; so does this one.
            logging.lastResort = _RunLogHandler(logging.lastResort, logging.WARNING)
        root = logging.getLogger()
        configured = any(h is not _ON_ROOT for h in root.handlers)
        if configured and _ON_ROOT not in root.handlers:
            root.addHandler(_ON_ROOT)
        elif not configured and _ON_ROOT in root.handlers:
            root.removeHandler(_ON_ROOT)  # alone there, it would turn basicConfig() off


if TYPE_CHECKING:  # mypy proves the classes meet the protocols third-party runners implement
    _runner: Runner = InProcessRunner()
    _handle: type[HeldRunHandle] = InProcessHandle
