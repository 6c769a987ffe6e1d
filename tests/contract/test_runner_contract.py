"""The contract every runner keeps, run against each one (subprocess, docker, inprocess).

Runs start in the deployment's working directory with the run's parameters and env, report the
flow's result, stream output while they go on, and end the same way for the same cause: success
COMPLETED; an exception or a non-zero exit FAILED with the reason; killed or out of memory
CRASHED with the reason. interrupt() lets a flow clean up; terminate() stops it regardless.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from agent.redaction import MASK, Redactor
from runners.base import LINE_PIECE, Outcome, starts_held
from tests.contract.conftest import Harness, Sink, arun

pytestmark = pytest.mark.integration


def test_result_and_parameters(harness: Harness) -> None:
    async def scenario() -> None:
        handle, sink = await harness.start("add", parameters={"a": 2, "b": 40})
        result = await handle.wait()
        assert (result.outcome, result.result) == (Outcome.COMPLETED, {"sum": 42}), result
        assert await handle.wait() == result  # wait() may be called again
        assert sink.of("stdout") == ["adding 2 and 40"]
        assert handle.info  # something to report: a pid, a container id…

    arun(scenario())


def test_async_flow(harness: Harness) -> None:
    async def scenario() -> None:
        handle, sink = await harness.start("add_async", parameters={"a": 1, "b": 2})
        result = await handle.wait()
        assert (result.outcome, result.result) == (Outcome.COMPLETED, 3), result
        assert sink.of("stdout") == ["async adding 1 and 2"]

    arun(scenario())


def test_runs_in_the_working_directory(harness: Harness) -> None:
    harness.needs("cwd")

    async def scenario() -> None:
        handle, sink = await harness.start("where")
        result = await handle.wait()
        assert result.outcome is Outcome.COMPLETED, result
        assert result.result["cwd"] == str(harness.working_dir)
        assert sink.of("stdout") == [f"cwd={harness.working_dir}"]

    arun(scenario())


def test_env_from_the_spec(harness: Harness) -> None:
    harness.needs("env")

    async def scenario() -> None:
        handle, _ = await harness.start("where", env={"CONTRACT_VAR": "from the run"})
        result = await handle.wait()
        assert result.outcome is Outcome.COMPLETED, result
        assert result.result["CONTRACT_VAR"] == "from the run"

    arun(scenario())


def test_output_is_streamed_while_the_run_goes_on(harness: Harness) -> None:
    marker = harness.working_dir / "marker"

    async def scenario() -> None:
        handle, sink = await harness.start("wait_for_marker", parameters={"marker": str(marker)})
        await sink.line("waiting on stdout")
        await sink.line("waiting on stderr")
        assert ("stderr", "waiting on stderr") in sink.lines
        marker.touch()
        result = await handle.wait()
        assert result.outcome is Outcome.COMPLETED, result
        assert sink.of("stdout")[-1] == "marker found"

    arun(scenario())


def test_concurrent_runs_keep_their_output_apart(harness: Harness) -> None:
    async def scenario() -> None:
        names = ["alpha", "beta", "gamma"]
        started = [await harness.start("chatty", parameters={"name": n}) for n in names]
        results = await asyncio.gather(*(handle.wait() for handle, _ in started))
        for name, result, (_, sink) in zip(names, results, started, strict=True):
            assert result.outcome is Outcome.COMPLETED, result
            assert sink.of("stdout") == [f"{name} out {i}" for i in range(50)]
            assert sink.of("stderr") == [f"{name} err {i}" for i in range(50)]

    arun(scenario())


def test_logging_output_is_captured_like_stderr(harness: Harness) -> None:
    async def scenario() -> None:
        handle, sink = await harness.start("log_records", parameters={"name": "contract"})
        assert (await handle.wait()).outcome is Outcome.COMPLETED
        assert sink.lines == [("stderr", "contract warns")]

    arun(scenario())


def test_an_exception_fails_the_run_with_the_reason(harness: Harness) -> None:
    async def scenario() -> None:
        handle, sink = await harness.start("boom", parameters={"message": "bad data"})
        result = await handle.wait()
        assert result.outcome is Outcome.FAILED
        assert result.message.startswith("ValueError: bad data"), result.message
        assert "about to fail" in result.message  # the last stderr lines, as context
        assert "Traceback (most recent call last):" in sink.of("stderr")
        assert sink.of("stderr")[-1] == "ValueError: bad data"

    arun(scenario())


def test_a_non_zero_exit_fails_the_run(harness: Harness) -> None:
    async def scenario() -> None:
        handle, _ = await harness.start("exit_with", parameters={"code": 3})
        result = await handle.wait()
        assert result.outcome is Outcome.FAILED
        assert result.exit_code == 3
        assert "exited with code 3" in result.message
        assert "exiting with 3" in result.message

    arun(scenario())


def test_a_held_run_begins_only_once_released(harness: Harness) -> None:
    # A scheduled run handed over early is started held: what takes time is done at once, the
    # flow itself begins only when released (then the agent has the run RUNNING).
    assert starts_held(harness.runner)

    async def scenario() -> None:
        handle, sink = await harness.start("stamp", held=True)
        await asyncio.sleep(1.0)
        assert sink.of("stdout") == []  # loaded, perhaps, but not begun
        released = time.time()
        await handle.release()  # type: ignore[attr-defined]
        result = await handle.wait()
        assert result.outcome is Outcome.COMPLETED, result
        assert result.result >= released
        assert sink.of("stdout") == ["began"]

        if "command" not in harness.limits:
            handle, sink = await harness.start(command=["echo", "began"], held=True)
            await asyncio.sleep(0.5)
            assert sink.of("stdout") == []
            await handle.release()  # type: ignore[attr-defined]
            assert (await handle.wait()).outcome is Outcome.COMPLETED
            assert sink.of("stdout") == ["began"]

    arun(scenario())


def test_a_held_run_stopped_before_release_never_begins(harness: Harness) -> None:
    async def scenario() -> None:
        handle, sink = await harness.start("stamp", held=True)
        await asyncio.sleep(0.5)
        await handle.terminate()
        result = await handle.wait()
        assert result.outcome is not Outcome.COMPLETED, result
        assert "began" not in sink.of("stdout")

    arun(scenario())


def test_a_command_runs_and_its_exit_status_counts(harness: Harness) -> None:
    harness.needs("command")

    async def scenario() -> None:
        ok, ok_sink = await harness.start(command=["sh", "-c", "echo fine"])
        bad, _ = await harness.start(command=["sh", "-c", "echo oops >&2; exit 7"])
        assert (await ok.wait()).outcome is Outcome.COMPLETED
        assert ok_sink.of("stdout") == ["fine"]
        failed = await bad.wait()
        assert failed.outcome is Outcome.FAILED
        assert failed.message == "exited with code 7\nlast lines of stderr:\noops"

    arun(scenario())


def test_an_unusable_entrypoint_fails_the_run(harness: Harness) -> None:
    async def scenario() -> None:
        missing, _ = await harness.start("no_such_function")
        result = await missing.wait()
        assert result.outcome is Outcome.FAILED
        assert "no_such_function" in result.message
        wrong, _ = await harness.start("add", parameters={"a": 1})
        result = await wrong.wait()
        assert result.outcome is Outcome.FAILED
        assert "parameters do not match" in result.message

    arun(scenario())


def test_a_killed_run_crashes(harness: Harness) -> None:
    harness.needs("sigkill")

    async def scenario() -> None:
        handle, _ = await harness.start("kill_self")
        result = await handle.wait()
        assert result.outcome is Outcome.CRASHED
        assert result.message.startswith("killed by signal SIGKILL"), result.message

    arun(scenario())


def test_out_of_memory_crashes_the_run(harness: Harness) -> None:
    harness.needs("oom")

    async def scenario() -> None:
        options = harness.options | {"memory": "64m"}
        handle, _ = await harness.start("hog_memory", options=options)
        result = await handle.wait()
        assert result.outcome is Outcome.CRASHED
        assert result.message.startswith("out of memory (limit 64m)"), result.message

    arun(scenario())


def test_interrupt_lets_the_flow_clean_up(harness: Harness) -> None:
    # A process gets SIGTERM; an in-process flow has its task cancelled.
    flow = "cancellable" if harness.name == "inprocess" else "trap_sigterm"

    async def scenario() -> None:
        handle, sink = await harness.start(flow)
        await sink.line("sleeping")
        await handle.interrupt()
        await asyncio.wait_for(handle.wait(), 10)
        assert "cleaning up" in sink.of("stdout")

    arun(scenario())


def test_terminate_stops_a_run_that_ignores_interrupt(harness: Harness) -> None:
    async def scenario() -> None:
        handle, sink = await harness.start("ignore_sigterm", parameters={"seconds": 20})
        await sink.line("sleeping")
        await handle.interrupt()
        waiting = asyncio.ensure_future(handle.wait())
        await asyncio.sleep(0.3)
        assert not waiting.done(), "it ignores interrupt: it must still be running"
        began = time.monotonic()
        await handle.terminate()
        result = await asyncio.wait_for(waiting, 10)
        assert time.monotonic() - began < 10  # not just the flow's own end after 20 s
        assert result.outcome is Outcome.CRASHED
        if harness.name == "inprocess":
            # A thread cannot be killed: the run is over for the agent, the thread runs on.
            assert "could not stop a sync in-process flow" in result.message
        else:
            assert result.message.startswith("killed by signal SIGKILL"), result.message

    arun(scenario())


class FullSink(Sink):
    """A sink that has no room, once it holds a line, until the test opens it (as the agent's
    shipper: runners/output.py, output_room)."""

    def __init__(self) -> None:
        super().__init__()
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def room(self) -> asyncio.Future[None] | None:
        return None if self.opened.done() or not self.lines else self.opened


def test_a_full_sink_stops_the_output_and_none_is_lost(harness: Harness) -> None:
    count, width = 3000, 1000  # 3 MB: far more than a runner may hold back

    async def scenario() -> None:
        sink = FullSink()
        spec = harness.spec("print_lines", parameters={"count": count, "width": width})
        handle = await harness.start_spec(spec, sink)
        await sink.line(f"{0:08d} " + "x" * (width - 9))
        await asyncio.sleep(1.5)
        # What was read before the runner saw the sink full: one read, or its in-flight limit.
        assert len(sink.lines) <= 400, len(sink.lines)
        sink.opened.set_result(None)
        result = await handle.wait()
        assert result.outcome is Outcome.COMPLETED, result
        assert sink.of("stdout") == [f"{i:08d} " + "x" * (width - 9) for i in range(count)]

    arun(scenario())


def test_a_secret_cut_by_a_long_lines_split_is_masked(harness: Harness) -> None:
    secret = "s3cr3t-t0ken-value-0123456789"
    redactor = Redactor.build(env={"API_TOKEN": secret})
    # The secret starts 10 characters before the 64 KiB cut: half in each piece.
    before = LINE_PIECE - 10

    async def scenario() -> None:
        sink = Sink()
        spec = harness.spec("long_line", parameters={"before": before, "text": secret})
        handle = await harness.start_spec(spec, redactor.wrap_sink(sink, LINE_PIECE))
        result = await handle.wait()
        assert result.outcome is Outcome.COMPLETED, result
        pieces = sink.of("stdout")
        assert len(pieces) == 2, [len(p) for p in pieces]  # the line was cut, at the secret
        text = "".join(pieces)
        assert MASK in text
        # No piece of the secret longer than what may look like any text's first letters.
        for size in (6, len(secret) - 10, 10):
            for start in range(len(secret) - size + 1):
                assert secret[start : start + size] not in text, secret[start : start + size]
        assert text.startswith("x" * (before - 1)) and text.endswith("y" * 1000)

    arun(scenario())
