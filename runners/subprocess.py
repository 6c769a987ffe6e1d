"""The subprocess runner: each run is a child process of the agent, in its own session.

A Python entrypoint runs as ``<python> runners/bootstrap.py <entrypoint>``: the interpreter is
the deployment's (option ``python``) and needs nothing of ours installed; parameters go in as
``FLOWAGENT_PARAMETERS`` and the outcome comes back through ``FLOWAGENT_RESULT_FILE``. A command
deployment runs its argv under a small ``sh`` wrapper that records its exit status in the same
kind of file. The child's environment is exactly ``spec.env`` plus those variables and
``PYTHONUNBUFFERED=1``.

Runs outlive the agent, so a restarted agent can adopt them (:meth:`SubprocessRunner.adopt`):

* The run's process holds the read ends of its own output pipes, so its writes never meet a
  closed pipe (SIGPIPE) while no agent reads; they block once the pipe is full, until an agent
  adopts the run (or the fence kills it). The adopting agent opens those pipes again through
  ``/proc/<pid>/fd/<n>``.
* A process that is not our child cannot be waited for, so its exit status comes from the result
  file (the bootstrap writes ``exit_code``; the wrapper writes it for commands), and its end is
  seen through a pidfd.

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
import concurrent.futures
import contextlib
import errno
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import psutil
import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from runners.base import (
    LINE_PIECE,
    HeldRunHandle,
    Outcome,
    OutputSink,
    RemainsKeeper,
    Runner,
    RunResult,
    RunSpec,
)
from runners.errors import RunnerError
from runners.outcome import completed, ended, failure_message, signal_name
from runners.output import Outlet, output_room
from runners.process_tree import kill_tree, signal_tree, watch_exit, watch_foreign_exit

log = structlog.get_logger(__name__)

BOOTSTRAP = Path(__file__).resolve().with_name("bootstrap.py")
#: Longer lines are handed to the sink in pieces of at most this many bytes.
MAX_LINE_BYTES = LINE_PIECE
#: How many stderr lines a FAILED or CRASHED message ends with.
#: The bootstrap's exit code when the entrypoint could not be loaded.
EXIT_ENTRYPOINT_ERROR = 2
#: How an adopted run's end is told when its process left no result file (not our child, so
#: its exit status cannot be read).
UNRECORDED = "its process ended without recording how"
#: How a held run whose agent went away before releasing it ended (it never began).
NOT_STARTED = "its agent went away before the flow began: none of it ran"
#: Runs a command deployment's argv (``sh -c STATUS_WRAPPER flowagent-run RESULT_FILE HELD ARGV…``,
#: HELD "held" when a line "go" on stdin must come first, else "-") and records its exit status, so an agent that is not its parent can still learn it. The
#: traps keep the wrapper alive while the command handles SIGTERM (handlers, unlike an ignored
#: signal, reset at exec). A command killed by a signal (status 128+N, N ≤ 15) is recorded as
#: -N and the wrapper then dies of the same signal, so its parent sees what it would have seen.
#: The command dies with its wrapper (SIGKILL on the parent's death, kept across exec), so
#: killing the run's process (the pid it reports) kills the command too. util-linux's setpriv
#: does this; without it the command could outlive a killed wrapper.
TIED = [setpriv, "--pdeathsig", "KILL", "--"] if (setpriv := shutil.which("setpriv")) else []
#: Makes the wrapper the subreaper of the command's processes, then becomes the wrapper: one
#: that escapes the run's session and group (double fork + setsid) is re-parented to it, not to
#: init, so signalling the run's tree (runners/process_tree.py) reaches it too. prctl(2) has no
#: command of its own; the setting is kept across exec. The bootstrap does the same for
#: entrypoints (runners/bootstrap.py, become_subreaper).
SUBREAPER = [
    sys.executable,
    "-I",
    "-S",
    "-c",
    "import ctypes, os, sys\n"
    "try:\n    ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)\n"
    "except (OSError, AttributeError):\n    pass\n"
    "os.execv(sys.argv[1], sys.argv[1:])",
]
STATUS_WRAPPER = """trap : HUP INT TERM
result=$1
held=$2
shift 2
if [ "$held" = held ]; then
    IFS= read -r line || line=
    exec </dev/null
    if [ "$line" != go ]; then
        printf '{"exit_code": 3, "not_started": true}' >"$result"
        exit 3
    fi
fi
"$@"
code=$?
if [ "$code" -gt 128 ] && [ "$code" -le 143 ]; then
    printf '{"exit_code": -%d}' "$((code - 128))" >"$result"
    trap - HUP INT TERM
    ulimit -c 0
    kill -"$((code - 128))" "$$"
fi
printf '{"exit_code": %d}' "$code" >"$result"
exit "$code"
"""


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
    # A held run's process starts at once and waits for a line "go" on its stdin before the
    # flow begins: the bootstrap reads it after loading the flow, the wrapper before the command.
    starts_held: ClassVar[bool] = True
    # What the fence kills after the agent died: the run's whole tree (runners/base.py).
    kill_orphan = staticmethod(kill_tree)

    @staticmethod
    def discard_remains(info: dict[str, Any], *, keep_outcome: bool = False) -> None:
        """Remove the run's result file (runners/base.py, RemainsKeeper): the runner leaves it
        after reaping the process, as the only record of how the run ended until the agent has
        recorded the outcome itself."""
        name = info.get("_result_file")
        if not isinstance(name, str):
            return
        path = Path(name)
        if keep_outcome and isinstance((_read_json(path) or {}).get("exit_code"), int):
            return
        _discard(path)

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
        if (spec.entrypoint is None) == (spec.command is None):
            raise RunnerError("a run needs exactly one of an entrypoint or a command")

        env = {**spec.env, "FLOWAGENT_PARAMETERS": parameters}
        env.setdefault("PYTHONUNBUFFERED", "1")
        if spec.command is not None:
            program = _resolve(spec.command[0], env, spec.working_dir)
        fd, name = tempfile.mkstemp(prefix="flowagent-result-", suffix=".json")
        os.close(fd)
        result_file = Path(name)
        opened: list[int] = []  # closed on failure; the handle owns what it is given
        try:
            out_read, out_write = _pipe(opened)
            err_read, err_write = _pipe(opened)
            go_read, go_write = _pipe(opened) if spec.held else (None, None)
            if spec.command is not None:
                held = "-" if go_read is None else "held"
                argv = [*SUBREAPER, "/bin/sh", "-c", STATUS_WRAPPER, "flowagent-run", name, held]
                argv += TIED
                argv += [program, *spec.command[1:]]
            else:
                assert spec.entrypoint is not None
                env["FLOWAGENT_RESULT_FILE"] = name
                if go_read is not None:
                    env["FLOWAGENT_HELD"] = "1"
                argv = [options.python or sys.executable, str(BOOTSTRAP), spec.entrypoint]
            stdin = subprocess.DEVNULL if go_read is None else go_read
            pipes = {"stdout": (out_read, out_write), "stderr": (err_read, err_write)}
            spawn = functools.partial(_spawn, argv, env, spec.working_dir, stdin, pipes)
            proc = await _spawn_off_the_loop(spawn)
            for end in (out_write, err_write, go_read):  # the child has its own copies
                if end is not None:
                    opened.remove(end)
                    os.close(end)
            outputs = {"stdout": out_read, "stderr": err_read}
            handle = SubprocessHandle(proc.pid, sink, result_file, self.drain_timeout, outputs)
            handle._go = go_write
            opened.clear()
            await handle._attach(watch_exit(proc), name=f"run-{spec.run_id}")
        except BaseException:
            for end in opened:
                os.close(end)
            _discard(result_file)
            raise
        return handle

    async def adopt(
        self, spec: RunSpec, info: dict[str, Any], sink: OutputSink
    ) -> SubprocessHandle:
        """Supervise again a run an earlier life of the agent started (see the module doc)."""
        try:
            pid, created = int(info["pid"]), float(info["create_time"])
            result_file = Path(str(info["_result_file"]))
            outputs = [int(info["_stdout_fd"]), int(info["_stderr_fd"])]
            inodes = [int(i) for i in info["_pipe_inodes"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise RunnerError(f"cannot adopt the run: its record lacks {exc}") from None
        try:
            pidfd: int | None = os.pidfd_open(pid)
            if abs(psutil.Process(pid).create_time() - created) > 0.01:
                os.close(pidfd)  # type: ignore[arg-type]
                pidfd = None  # the pid now names another process
        except (OSError, psutil.Error):
            pidfd = None
        if pidfd is None:
            # It ended while no agent watched it: only its result file can say how.
            # Read, not removed: until the agent has recorded the outcome itself (its fence
            # entry), this file is the only record of it (removed with that entry).
            document = _read_json(result_file)
            if document is None or not isinstance(document.get("exit_code"), int):
                raise RunnerError(f"{UNRECORDED} while no agent watched it (pid {pid})")
            result = SubprocessHandle.outcome(document["exit_code"], document, ())
            return SubprocessHandle.already_over(info, sink, result)
        reopened: dict[str, int] = {}
        for stream, fd, inode in zip(("stdout", "stderr"), outputs, inodes, strict=True):
            with contextlib.suppress(OSError):
                mine = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
                if os.fstat(mine).st_ino == inode:
                    reopened[stream] = mine
                else:  # the flow closed it and reused the number
                    os.close(mine)
        handle = SubprocessHandle(pid, sink, result_file, self.drain_timeout, reopened, info)
        if len(reopened) < len(outputs):
            log.warning("adopted_run_output_lost", pid=pid)
            handle._emit("stderr", b"flowagent: this run's output could not be followed again")
        try:
            await handle._attach(watch_foreign_exit(pidfd), name=f"run-{spec.run_id}")
        except BaseException:
            os.close(pidfd)
            raise
        return handle


def _pipe(opened: list[int]) -> tuple[int, int]:
    read, write = os.pipe()
    opened += (read, write)
    return read, write


def _resolve(program: str, env: dict[str, str], cwd: Path) -> str:
    """The command's executable, found as exec would; a clear error if it cannot be run."""
    if "/" in program:
        path = cwd / program
        if not path.is_file():
            raise RunnerError(f"command not found: {program}")
    else:
        search = env.get("PATH", os.defpath)
        found = shutil.which(
            program,
            path=os.pathsep.join(
                p if os.path.isabs(p) else os.fspath(cwd / p) for p in search.split(os.pathsep)
            ),
        )
        if found is None:
            raise RunnerError(
                f"command not found: {program}", hint=f"looked up on the run's PATH: {search}"
            )
        path = Path(found)
    if not os.access(path, os.X_OK):
        raise RunnerError(f"cannot execute {program}: permission denied")
    return program if "/" in program else os.fspath(path)


_SPAWNER = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="spawn")


async def _spawn_off_the_loop(
    spawn: Callable[[], subprocess.Popen[bytes]],
) -> subprocess.Popen[bytes]:
    """``spawn`` (:func:`_spawn`) in a worker thread: forking a large agent blocks for milliseconds, and a
    thousand runs starting at once would hold the event loop (and its heartbeats) for seconds.
    Popen releases the GIL while it forks, so the loop runs on meanwhile. The threads are our
    own: a thousand queued spawns must not hold up the loop's default executor, which others
    (DNS lookups for a new connection) need."""
    spawning = asyncio.ensure_future(asyncio.get_running_loop().run_in_executor(_SPAWNER, spawn))
    try:
        return await asyncio.shield(spawning)
    except asyncio.CancelledError:
        # The process may be starting in the thread, on descriptors the caller will close:
        # wait for it, and stop it, before giving up.
        with contextlib.suppress(Exception):
            proc = await spawning
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
            await asyncio.to_thread(proc.wait)
        raise


def _spawn(
    argv: list[str],
    env: dict[str, str],
    cwd: Path,
    stdin: int,
    outputs: dict[str, tuple[int, int]],
) -> subprocess.Popen[bytes]:
    """``outputs``: each stream's pipe, as (read end, write end)."""
    try:
        return subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            # A held run's stdin is its go pipe (read, then replaced by /dev/null).
            stdin=stdin,
            stdout=outputs["stdout"][1],
            stderr=outputs["stderr"][1],
            # The run holds the read ends of its own output: if the agent dies, its writes
            # block instead of killing it with SIGPIPE, and a restarted agent can reopen them.
            pass_fds=(outputs["stdout"][0], outputs["stderr"][0]),
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
    """One run's process: a child of ours, or one adopted from an earlier life of the agent."""

    def __init__(
        self,
        pid: int,
        sink: OutputSink,
        result_file: Path | None,
        drain_timeout: float,
        outputs: dict[str, int],
        adopted: dict[str, Any] | None = None,
    ) -> None:
        self._pid = pid
        self._sink = sink
        self._result_file = result_file
        self._drain_timeout = drain_timeout
        self._outputs = outputs  # stream name -> read end of its pipe
        self._ps: psutil.Process | None = None
        if adopted is not None:
            self._info = {k: v for k, v in adopted.items() if k != "output_since"}
        else:
            # Not reaped yet, so the pid is still this process; psutil keeps its start time so
            # a later signal cannot reach a process that reused the pid.
            self._ps = psutil.Process(pid)
            self._info = {
                "pid": pid,
                "pgid": pid,  # start_new_session: the run leads its own group
                "create_time": self._ps.create_time(),
                "_result_file": None if result_file is None else os.fspath(result_file),
                # What an adopting agent needs to read the output again (see the module doc).
                "_stdout_fd": outputs["stdout"],
                "_stderr_fd": outputs["stderr"],
                "_pipe_inodes": [os.fstat(outputs[s]).st_ino for s in ("stdout", "stderr")],
            }
        self._outlet = Outlet(sink, pid=self._pid)
        self._pipes: list[_LinePipe] = []
        self._exited = False
        self._done: asyncio.Future[RunResult] | None = None
        self._go: int | None = None  # a held run's go pipe (runners/base.py, HeldRunHandle)

    @classmethod
    def already_over(
        cls, info: dict[str, Any], sink: OutputSink, result: RunResult
    ) -> SubprocessHandle:
        """A handle on an adopted run that ended while no agent watched it."""
        handle = cls(int(info["pid"]), sink, None, 0.0, {}, info)
        handle._exited = True
        handle._done = asyncio.get_running_loop().create_future()
        handle._done.set_result(result)
        return handle

    async def _attach(self, exited: Awaitable[int | None], name: str) -> None:
        loop = asyncio.get_running_loop()
        if self._ps is None:
            with contextlib.suppress(psutil.Error):
                self._ps = psutil.Process(self._pid)
        pending = dict(self._outputs)
        try:
            for stream in self._outputs:
                pipe = os.fdopen(pending.pop(stream), "rb", buffering=0)
                try:
                    room = functools.partial(output_room, self._sink)
                    _, protocol = await loop.connect_read_pipe(
                        functools.partial(_LinePipe, stream, self._emit, room), pipe
                    )
                except BaseException:
                    pipe.close()
                    raise
                self._pipes.append(protocol)
        except BaseException:
            # Cannot supervise it: do not leave it running unwatched.
            with contextlib.suppress(OSError):
                os.killpg(self._pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                await asyncio.shield(exited)
            for p in self._pipes:
                p.close()
            for fd in pending.values():
                os.close(fd)
            raise
        self._done = loop.create_task(self._supervise(exited), name=f"{name}-supervise")

    @property
    def info(self) -> dict[str, Any]:
        return dict(self._info)

    async def wait(self) -> RunResult:
        assert self._done is not None, "SubprocessHandle is created by SubprocessRunner"
        # Shielded: a caller giving up on waiting must not stop the supervision.
        return await asyncio.shield(self._done)

    async def release(self) -> None:
        if self._go is not None:
            with contextlib.suppress(OSError):  # it is gone already: wait() will say how
                os.write(self._go, b"go\n")
            self._close_go()

    def _close_go(self) -> None:
        if self._go is not None:
            os.close(self._go)
            self._go = None

    async def interrupt(self) -> None:
        self._signal(signal.SIGTERM)

    async def terminate(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, sig: signal.Signals) -> None:
        if self._done is None or self._done.done():
            return  # the run is over: its pid and group may belong to someone else by now
        # Once the main process is gone only its group is left to reach (output draining).
        root = None if self._exited else self._ps
        signal_tree(root, self._pid, sig)

    async def _supervise(self, exited: Awaitable[int | None]) -> RunResult:
        # The result file is left in place: the process is reaped now, so until the agent has
        # recorded the outcome (agent/fence.py, which then calls discard_remains) it
        # is the only record of how the run ended. Removed here, an agent killed in between
        # found the run "ended without recording how" and ran finished work again.
        code = await exited
        self._exited = True
        self._close_go()
        await self._drain()
        document = None if self._result_file is None else _read_json(self._result_file)
        if code is None:  # adopted: not our child, so its status is in the result file
            recorded = (document or {}).get("exit_code")
            if not isinstance(recorded, int):
                return RunResult(Outcome.CRASHED, f"{UNRECORDED} (killed by a signal?)")
            code = recorded
        return self.outcome(code, document, self._outlet.stderr_tail)

    async def _drain(self) -> None:
        """Read the pipes to their end, giving up after ``drain_timeout`` seconds of waiting
        for a process that holds them open. Time they spend paused (the sink is full) does not
        count: what the run printed before it ended is still shipped whole."""
        closed = [p.closed for p in self._pipes]
        waited = 0.0
        while closed and waited < self._drain_timeout:
            step = min(0.25, self._drain_timeout - waited)
            _, still_open = await asyncio.wait(closed, timeout=step)
            if not still_open:
                return
            if not any(p.paused for p in self._pipes):
                waited += step
        if closed:
            log.warning("run_output_abandoned", pid=self._pid, reason="pipes held open")
            for p in self._pipes:
                p.close()
            await asyncio.wait(closed)

    def _emit(self, stream: str, raw: bytes) -> None:
        line = raw.decode("utf-8", errors="replace").removesuffix("\r")
        self._outlet(stream, line)

    @staticmethod
    def outcome(
        code: int, document: dict[str, Any] | None, stderr_tail: Iterable[str]
    ) -> RunResult:
        """``code`` is a return code: negative for a signal, as subprocess reports it."""
        if code == 0:
            return completed(document)
        if (document or {}).get("not_started") is True:
            # Held, and its agent went away before saying go: none of the flow ran.
            return RunResult(Outcome.CRASHED, NOT_STARTED, code)
        if code < 0:
            outcome, headline = Outcome.CRASHED, f"killed by signal {signal_name(-code)}"
        else:
            outcome, headline = Outcome.FAILED, failure_message(code, document)
        return ended(outcome, headline, code, stderr_tail)


def _discard(path: Path) -> None:
    path.unlink(missing_ok=True)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        document = json.loads(path.read_text(encoding="utf-8") or "null")
    except (OSError, ValueError):
        return None  # killed while writing it, or never written (os._exit, a signal)
    return document if isinstance(document, dict) else None


class _LinePipe(asyncio.Protocol):
    """Reads one output pipe; each line (bytes, no newline) goes to ``emit(stream, line)``.

    While ``room()`` returns a future (the sink is full), the pipe is not read: the run blocks
    on write once the pipe is full, and nothing piles up in the agent (runners/output.py).
    """

    def __init__(
        self,
        stream: str,
        emit: Callable[[str, bytes], None],
        room: Callable[[], asyncio.Future[None] | None],
    ) -> None:
        self._stream = stream
        self._emit = emit
        self._room = room
        self._buffer = bytearray()
        self._transport: asyncio.ReadTransport | None = None
        self.paused = False
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.ReadTransport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._emit_lines(final=False)
        room = self._room()
        if room is not None and self._transport is not None and not self.paused:
            self.paused = True
            self._transport.pause_reading()
            room.add_done_callback(self._resume)

    def _resume(self, _: asyncio.Future[None]) -> None:
        self.paused = False
        if self._transport is not None:
            self._transport.resume_reading()  # a no-op once the pipe is closed

    def connection_lost(self, exc: Exception | None) -> None:
        self.paused = False
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
    _keeper: RemainsKeeper = SubprocessRunner()
    _handle: type[HeldRunHandle] = SubprocessHandle
