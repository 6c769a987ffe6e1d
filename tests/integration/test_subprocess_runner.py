"""The subprocess runner against real processes: nothing about the child is faked."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar
from uuid import uuid4

import psutil
import pytest

from agent.errors import RunnerError
from runners.base import Outcome, RunResult, RunSpec
from runners.subprocess import (
    MAX_LINE_BYTES,
    NOT_STARTED,
    STATUS_WRAPPER,
    SubprocessHandle,
    SubprocessRunner,
)

pytestmark = pytest.mark.integration

T = TypeVar("T")
TIMEOUT = 20  # seconds; only reached when something is broken


class Sink:
    """Collects output lines and lets a test wait for a particular one."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []
        self._waiters: list[tuple[Callable[[str], bool], asyncio.Future[str]]] = []

    def __call__(self, stream: str, line: str) -> None:
        self.lines.append((stream, line))
        for match, future in self._waiters:
            if not future.done() and match(line):
                future.set_result(line)

    def of(self, stream: str) -> list[str]:
        return [line for s, line in self.lines if s == stream]

    async def line_starting(self, prefix: str) -> str:
        """The first line starting with ``prefix``, waiting for it if it has not come yet."""
        for _, line in self.lines:
            if line.startswith(prefix):
                return line
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiters.append((lambda line: line.startswith(prefix), future))
        return await asyncio.wait_for(future, TIMEOUT)


def arun(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT))


def spec_for(tmp_path: Path, **fields: Any) -> RunSpec:
    fields.setdefault("env", {"PATH": os.environ["PATH"]})
    fields.setdefault("working_dir", tmp_path)
    return RunSpec(run_id=uuid4(), **fields)


def write(path: Path, source: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
    return path


async def start(
    spec: RunSpec, runner: SubprocessRunner | None = None
) -> tuple[SubprocessHandle, Sink]:
    sink = Sink()
    handle = await (runner or SubprocessRunner()).start(spec, sink)
    return handle, sink


def run(spec: RunSpec, runner: SubprocessRunner | None = None) -> tuple[RunResult, Sink]:
    async def go() -> tuple[RunResult, Sink]:
        handle, sink = await start(spec, runner)
        return await handle.wait(), sink

    return arun(go())


def is_dead(pid: int) -> bool:
    try:
        # An orphan killed here is re-parented to init, which reaps it in its own time.
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def open_fds() -> set[tuple[int, str]]:
    """This process's open descriptors with what each points at (pipe:[inode], a path...)."""
    gc.collect()
    fds = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            fds.add((int(name), os.readlink(f"/proc/self/fd/{name}")))
        except FileNotFoundError:  # the descriptor listdir itself used
            continue
    return fds


@pytest.fixture
def private_tempdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where the runner's temporary result files go, so a test can see what is left."""
    path = tmp_path / "tmp"
    path.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    return path


@pytest.fixture(autouse=True)
def no_children_left() -> Iterator[None]:
    # Other suites' session fixtures (a server) may be children too: only new ones count.
    before = set(psutil.Process().children(recursive=True))
    yield
    # Every run's process must have been reaped, and nothing of ours left running.
    left = [
        p for p in psutil.Process().children(recursive=True) if p not in before or is_dead(p.pid)
    ]
    assert left == []


# Outcomes ---------------------------------------------------------------------------------------


def test_parameters_become_kwargs_and_the_result_comes_back(tmp_path: Path) -> None:
    write(tmp_path / "flows/helper.py", "GREETING = 'hello'\n")
    write(
        tmp_path / "flows/etl.py",
        """
        from helper import GREETING  # a sibling of the flow file

        def main(name, times=1):
            print(f"{GREETING} {name}")
            return {"greeting": GREETING, "name": name, "times": times}
        """,
    )
    spec = spec_for(
        tmp_path, entrypoint="flows/etl.py:main", parameters={"name": "ada", "times": 2}
    )

    result, sink = run(spec)

    assert result == RunResult(
        Outcome.COMPLETED, "completed", 0, {"greeting": "hello", "name": "ada", "times": 2}
    )
    assert sink.lines == [("stdout", "hello ada")]


def test_async_flow_function(tmp_path: Path) -> None:
    write(
        tmp_path / "flow.py",
        """
        import asyncio

        async def main(n):
            await asyncio.sleep(0)
            return n * 2
        """,
    )
    result, _ = run(spec_for(tmp_path, entrypoint="flow.py:main", parameters={"n": 21}))
    assert (result.outcome, result.result) == (Outcome.COMPLETED, 42)


def test_package_module_entrypoint(tmp_path: Path) -> None:
    write(tmp_path / "pipelines/__init__.py", "")
    write(tmp_path / "pipelines/util.py", "def double(x):\n    return 2 * x\n")
    write(
        tmp_path / "pipelines/daily.py",
        "from .util import double\n\ndef run(x):\n    return double(x)\n",
    )
    spec = spec_for(tmp_path, entrypoint="pipelines.daily:run", parameters={"x": 4})
    result, _ = run(spec)
    assert (result.outcome, result.result) == (Outcome.COMPLETED, 8)


def test_working_dir_and_environment_are_exactly_the_specs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENT_SECRET", "must not leak into runs")
    work = tmp_path / "work"
    write(
        work / "flow.py",
        """
        import os

        def main():
            return {"cwd": os.getcwd(), "env": dict(os.environ)}
        """,
    )
    env = {"PATH": os.environ["PATH"], "FROM_SPEC": "yes"}
    result, _ = run(spec_for(tmp_path, working_dir=work, entrypoint="flow.py:main", env=env))

    assert result.result["cwd"] == str(work.resolve())
    child_env = result.result["env"]
    assert child_env["FROM_SPEC"] == "yes"
    assert "AGENT_SECRET" not in child_env
    assert child_env["FLOWAGENT_PARAMETERS"] == "{}"
    assert child_env["PYTHONUNBUFFERED"] == "1"
    # LC_CTYPE: the child Python sets it itself when the locale is C (PEP 538).
    assert set(child_env) - {"LC_CTYPE"} == {
        "PATH",
        "FROM_SPEC",
        "FLOWAGENT_PARAMETERS",
        "FLOWAGENT_RESULT_FILE",
        "PYTHONUNBUFFERED",
    }


def test_output_lines_stream_while_the_run_is_going(tmp_path: Path) -> None:
    fifo = tmp_path / "go"
    os.mkfifo(fifo)
    write(
        tmp_path / "flow.py",
        f"""
        import sys

        def main():
            print("waiting")
            print("a warning", file=sys.stderr)
            with open({str(fifo)!r}) as fifo:  # blocks until the test opens the other end
                print("told", fifo.read().strip())
            print("second warning", file=sys.stderr)
        """,
    )

    async def go() -> tuple[RunResult, Sink]:
        handle, sink = await start(spec_for(tmp_path, entrypoint="flow.py:main"))
        await sink.line_starting("waiting")
        await sink.line_starting("a warning")
        assert sink.of("stdout") == ["waiting"]  # the flow is still blocked on the fifo
        await asyncio.to_thread(fifo.write_text, "go\n")
        return await handle.wait(), sink

    result, sink = arun(go())

    assert result.outcome is Outcome.COMPLETED
    assert sink.of("stdout") == ["waiting", "told go"]
    assert sink.of("stderr") == ["a warning", "second warning"]


def test_exception_fails_with_its_message_and_stderr_context(tmp_path: Path) -> None:
    write(
        tmp_path / "flow.py",
        """
        def main():
            raise ValueError("boom")
        """,
    )
    result, sink = run(spec_for(tmp_path, entrypoint="flow.py:main"))

    assert (result.outcome, result.exit_code) == (Outcome.FAILED, 1)
    headline, context = result.message.split("\n", 1)
    assert headline == "ValueError: boom"
    assert 'raise ValueError("boom")' in context  # the traceback's last lines
    assert sink.of("stderr")[-1] == "ValueError: boom"


def test_sys_exit_fails_with_its_exit_code(tmp_path: Path) -> None:
    write(tmp_path / "flow.py", "import sys\n\ndef main():\n    sys.exit(3)\n")
    result, _ = run(spec_for(tmp_path, entrypoint="flow.py:main"))
    assert result == RunResult(Outcome.FAILED, "exited with code 3", 3)


def test_command_deployment(tmp_path: Path) -> None:
    spec = spec_for(
        tmp_path,
        command=["sh", "-c", 'echo hi; echo "$FLOWAGENT_PARAMETERS"; echo oops >&2; exit 4'],
        parameters={"x": 1},
    )
    result, sink = run(spec)
    assert result == RunResult(Outcome.FAILED, "exited with code 4\nlast lines of stderr:\noops", 4)
    assert sink.of("stdout") == ["hi", '{"x": 1}']


def test_killed_by_a_signal_crashes(tmp_path: Path) -> None:
    write(
        tmp_path / "flow.py",
        "import os, signal\n\ndef main():\n    os.kill(os.getpid(), signal.SIGKILL)\n",
    )
    result, _ = run(spec_for(tmp_path, entrypoint="flow.py:main"))
    assert result == RunResult(Outcome.CRASHED, "killed by signal SIGKILL", -signal.SIGKILL)


@pytest.mark.parametrize(
    ("script", "returncode"),
    [("exit 0", 0), ("exit 4", 4), ("kill -TERM $$", -signal.SIGTERM), ("kill -9 $$", -9)],
)
def test_the_command_wrapper_records_how_the_command_ended(
    tmp_path: Path, script: str, returncode: int
) -> None:
    # Command runs go through this wrapper, so an agent that is not their parent (one that
    # took the run over after a restart) can learn how they ended. Its parent must see what it
    # would have seen without it: the same exit code, or death by the same signal.
    status = tmp_path / "status.json"
    wrapped = [
        "/bin/sh",
        "-c",
        STATUS_WRAPPER,
        "flowagent-run",
        str(status),
        "-",
        "sh",
        "-c",
        script,
    ]
    assert subprocess.run(wrapped, check=False).returncode == returncode
    assert json.loads(status.read_text()) == {"exit_code": returncode}


def test_killing_a_command_runs_reported_pid_kills_the_command(tmp_path: Path) -> None:
    # The reported pid is the wrapper's: whoever kills it (a user, kill -9) must not leave the
    # command running unsupervised.
    script = 'echo "$$" > command.pid; echo ready; exec sleep 30'

    async def go() -> RunResult:
        handle, sink = await start(spec_for(tmp_path, command=["sh", "-c", script]))
        await sink.line_starting("ready")
        os.kill(handle.info["pid"], signal.SIGKILL)
        return await handle.wait()

    assert arun(go()) == RunResult(Outcome.CRASHED, "killed by signal SIGKILL", -signal.SIGKILL)
    command = int((tmp_path / "command.pid").read_text())
    deadline = time.monotonic() + 5
    while not is_dead(command) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert is_dead(command)


@pytest.mark.parametrize("kind", ["entrypoint", "command"])
def test_a_held_run_whose_agent_is_gone_never_begins(tmp_path: Path, kind: str) -> None:
    # Its go pipe closes with the agent: the run exits without beginning its flow.
    write(tmp_path / "flow.py", "def main():\n    print('began')\n")
    fields: dict[str, Any] = (
        {"entrypoint": "flow.py:main"} if kind == "entrypoint" else {"command": ["echo", "began"]}
    )

    async def go() -> tuple[RunResult, Sink]:
        handle, sink = await start(spec_for(tmp_path, held=True, **fields))
        handle._close_go()  # what the agent's death does to it
        return await handle.wait(), sink

    result, sink = arun(go())
    # CRASHED, not FAILED: the flow never ran, so nothing of it can have failed.
    assert (result.outcome, result.message, result.exit_code) == (Outcome.CRASHED, NOT_STARTED, 3)
    assert "began" not in sink.of("stdout")


def test_a_command_that_handles_sigterm_finishes_its_clean_up(tmp_path: Path) -> None:
    script = 'trap "echo cleaning up; exit 0" TERM; echo ready; while :; do sleep 0.05; done'

    async def go() -> tuple[RunResult, Sink]:
        handle, sink = await start(spec_for(tmp_path, command=["sh", "-c", script]))
        await sink.line_starting("ready")
        await handle.interrupt()
        return await handle.wait(), sink

    result, sink = arun(go())
    assert result == RunResult(Outcome.COMPLETED, "completed", 0)
    assert sink.of("stdout") == ["ready", "cleaning up"]


def test_a_run_holds_its_own_output_pipes_open(tmp_path: Path) -> None:
    # What lets a run outlive its agent: its writes never meet a pipe without a reader.
    async def go() -> tuple[dict[str, Any], set[int]]:
        handle, sink = await start(spec_for(tmp_path, command=["sh", "-c", "echo ready; sleep 5"]))
        await sink.line_starting("ready")
        info = handle.info
        held = {
            os.stat(f"/proc/{info['pid']}/fd/{info[k]}").st_ino
            for k in ("_stdout_fd", "_stderr_fd")
        }
        await handle.terminate()
        await handle.wait()
        return info, held

    info, held = arun(go())
    assert held == set(info["_pipe_inodes"])


@pytest.mark.parametrize(
    ("entrypoint", "message"),
    [
        ("flows/etl.py:main", "entrypoint file not found: flows/etl.py (working directory {cwd})"),
        ("flow.py:mian", "flow.py has no function 'mian'"),
        ("no_such_package.flows:main", "cannot import module 'no_such_package.flows': "),
    ],
)
def test_entrypoint_that_cannot_load_fails_clearly(
    tmp_path: Path, entrypoint: str, message: str
) -> None:
    write(tmp_path / "flow.py", "def main():\n    pass\n")
    result, sink = run(spec_for(tmp_path, entrypoint=entrypoint))

    assert (result.outcome, result.exit_code) == (Outcome.FAILED, 2)
    assert result.message.startswith(message.format(cwd=tmp_path))
    assert "\n" not in result.message  # the one stderr line is the message itself
    assert sink.of("stderr") == ["flowagent: " + result.message]


def test_missing_working_dir_cannot_start(tmp_path: Path) -> None:
    spec = spec_for(tmp_path, working_dir=tmp_path / "gone", command=["true"])
    with pytest.raises(
        RunnerError, match=f"working directory not found: {re.escape(str(spec.working_dir))}$"
    ):
        arun(SubprocessRunner().start(spec, Sink()))


@pytest.mark.parametrize(
    ("fields", "missing"),
    [
        ({"command": ["no-such-command-xyz", "arg"]}, "no-such-command-xyz"),
        ({"entrypoint": "flow.py:main", "options": {"python": "/nope/python"}}, "/nope/python"),
    ],
)
def test_missing_executable_cannot_start(
    tmp_path: Path, private_tempdir: Path, fields: dict[str, Any], missing: str
) -> None:
    with pytest.raises(RunnerError, match=f"command not found: {missing}$"):
        arun(SubprocessRunner().start(spec_for(tmp_path, **fields), Sink()))
    assert list(private_tempdir.iterdir()) == []  # the result file went with the failed start


def test_another_interpreter_needs_nothing_of_ours(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    write(
        tmp_path / "flow.py",
        """
        import importlib.util, sys

        def main():
            found = {m: importlib.util.find_spec(m) is not None for m in ("pydantic", "agent")}
            return {"prefix": sys.prefix, "found": found}
        """,
    )
    spec = spec_for(
        tmp_path, entrypoint="flow.py:main", options={"python": str(venv / "bin/python")}
    )
    result, _ = run(spec)
    assert result.outcome is Outcome.COMPLETED, result.message
    assert result.result == {"prefix": str(venv), "found": {"pydantic": False, "agent": False}}


# Stopping runs ----------------------------------------------------------------------------------


def test_interrupt_sends_sigterm(tmp_path: Path) -> None:
    write(
        tmp_path / "flow.py", "import time\n\ndef main():\n    print('ready')\n    time.sleep(60)\n"
    )

    async def go() -> RunResult:
        handle, sink = await start(spec_for(tmp_path, entrypoint="flow.py:main"))
        await sink.line_starting("ready")
        await handle.interrupt()
        return await handle.wait()

    assert arun(go()) == RunResult(Outcome.CRASHED, "killed by signal SIGTERM", -signal.SIGTERM)


def test_flow_that_traps_sigterm_stops_cleanly(tmp_path: Path) -> None:
    write(
        tmp_path / "flow.py",
        """
        import signal

        def main():
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
            print("ready")
            signal.sigwait({signal.SIGTERM})
            print("cleaning up")
            return "stopped cleanly"
        """,
    )

    async def go() -> tuple[RunResult, Sink]:
        handle, sink = await start(spec_for(tmp_path, entrypoint="flow.py:main"))
        await sink.line_starting("ready")
        await handle.interrupt()
        return await handle.wait(), sink

    result, sink = arun(go())
    assert result == RunResult(Outcome.COMPLETED, "completed", 0, "stopped cleanly")
    assert sink.of("stdout") == ["ready", "cleaning up"]


def test_terminate_kills_the_tree_even_a_grandchild_in_its_own_session(tmp_path: Path) -> None:
    write(
        tmp_path / "flow.py",
        """
        import subprocess, sys

        GRANDCHILD = (
            "import os, time; os.setsid(); print('grandchild', os.getpid(), flush=True); "
            "time.sleep(60)"
        )

        def main():
            subprocess.run([sys.executable, "-c", GRANDCHILD])
        """,
    )

    async def go() -> tuple[RunResult, int, dict[str, Any]]:
        handle, sink = await start(spec_for(tmp_path, entrypoint="flow.py:main"))
        grandchild = int((await sink.line_starting("grandchild")).split()[1])
        assert os.getsid(grandchild) != handle.info["pgid"]  # out of the run's session and group
        await handle.terminate()
        return await handle.wait(), grandchild, handle.info

    result, grandchild, info = arun(go())

    assert result == RunResult(Outcome.CRASHED, "killed by signal SIGKILL", -signal.SIGKILL)
    deadline = time.monotonic() + TIMEOUT
    while not is_dead(grandchild) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert is_dead(grandchild)
    assert info["pid"] == info["pgid"] and info["create_time"] > 0


def test_interrupt_and_terminate_after_the_end_do_nothing(tmp_path: Path) -> None:
    async def go() -> list[RunResult]:
        handle, _ = await start(spec_for(tmp_path, command=["true"]))
        first = await handle.wait()
        await handle.interrupt()
        await handle.terminate()
        return [first, await handle.wait()]

    assert arun(go()) == [RunResult(Outcome.COMPLETED, "completed", 0)] * 2


def test_background_process_holding_the_pipes_does_not_hold_wait(tmp_path: Path) -> None:
    # `sleep` inherits stdout and stderr and outlives the run.
    spec = spec_for(tmp_path, command=["sh", "-c", "sleep 60 & echo $!"])
    result, sink = run(spec, SubprocessRunner(drain_timeout=0.1))
    sleeper = psutil.Process(int(sink.of("stdout")[0]))
    sleeper.kill()

    assert result == RunResult(Outcome.COMPLETED, "completed", 0)


# Output handling --------------------------------------------------------------------------------


def test_very_long_lines_arrive_in_whole_characters(tmp_path: Path) -> None:
    write(tmp_path / "flow.py", "def main():\n    print('é' * 100_000)\n    print('end')\n")
    _, sink = run(spec_for(tmp_path, entrypoint="flow.py:main"))

    *pieces, last = sink.of("stdout")
    assert last == "end"
    assert len(pieces) == 4  # 200,000 bytes in pieces of at most 64 KiB
    assert all(len(p.encode()) <= MAX_LINE_BYTES for p in pieces)
    assert "".join(pieces) == "é" * 100_000


def test_a_failing_sink_does_not_break_the_run(tmp_path: Path) -> None:
    def sink(stream: str, line: str) -> None:
        raise RuntimeError("log shipping is down")

    async def go() -> RunResult:
        spec = spec_for(tmp_path, command=["sh", "-c", "seq 1000; echo done >&2"])
        handle = await SubprocessRunner().start(spec, sink)
        return await handle.wait()

    assert arun(go()) == RunResult(Outcome.COMPLETED, "completed", 0)


# Resources --------------------------------------------------------------------------------------


def test_concurrent_runs_leak_no_file_descriptors_or_files(
    tmp_path: Path, private_tempdir: Path
) -> None:
    async def many(n: int) -> list[tuple[RunResult, Sink]]:
        specs = [spec_for(tmp_path, command=["sh", "-c", f"echo {i}"]) for i in range(n)]
        started = [await start(spec) for spec in specs]
        # wait() is safe to call more than once, from more than one task.
        results = await asyncio.gather(*(h.wait() for h, _ in started for _ in range(2)))
        for handle, _ in started:  # the outcomes are recorded (here: in ``results``)
            SubprocessRunner.discard_remains(handle.info)
        return [(results[2 * i], sink) for i, (_, sink) in enumerate(started)]

    arun(many(1))  # warm up: first use opens what later runs reuse
    before = open_fds()
    outcomes = arun(many(50))

    assert [(r.outcome, s.lines) for r, s in outcomes] == [
        (Outcome.COMPLETED, [("stdout", str(i))]) for i in range(50)
    ]
    # Only descriptors opened during the runs count: the garbage collector may close older ones
    # (a previous test's sockets) meanwhile, so the total can fall without anything being wrong.
    assert open_fds() - before == set()
    assert list(private_tempdir.iterdir()) == []
