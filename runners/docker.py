"""The Docker runner: each run is a container on the Docker daemon the agent can reach.

A Python entrypoint runs as ``<python> /flowagent/bootstrap.py <entrypoint>`` in the deployment's
image, which needs Python and nothing of ours: the bootstrap, the working directory (at its own
path, or /flow where that would hide the image's system directories) and one result file are
bind-mounted. ``docker-init`` is PID 1, so SIGTERM reaches the flow (a PID 1 without a handler
ignores it) and an exit status of 128+N means "killed by signal N". The agent's own environment
stays out (its PATH, HOME and API key mean nothing inside, or too much): the container's env is
the ``env`` option < the deployment's and the run's env.

Containers outlive the agent. A restarted agent takes its runs over with :meth:`DockerRunner.adopt`:
the container is found by the id in the run's ``info`` (by its ``flowagent.run-id`` label when that
id is unknown), its logs are replayed from ``output_since``, and from then on it is supervised as a
started one is; one that exited meanwhile still reports its exit status and result file. So an
agent whose event loop goes away without ending a run (killed, or its loop torn down) leaves the
container, and the files it needs, in place.

``wait()`` ends after the logs are drained, and leaves the container and its result file: until the
agent has recorded the outcome they are its only record, so an agent killed in between still
reports the run as it ended. The agent's fence then calls :meth:`DockerRunner.discard_remains`,
which removes them (the container only if the run asked for ``auto_remove``). OOMKilled →
CRASHED "out of memory (limit 64m)"; exit 0 → COMPLETED with the result file's result; 128+N →
CRASHED "killed by signal SIGKILL"; other non-zero → FAILED with the result file's error or
"exited with code N". FAILED and CRASHED messages end with the last stderr lines.

The docker SDK blocks: each call runs in a daemon thread of its own (the loop's small default
executor would be exhausted by two long log streams per run, and is joined at exit), and output
lines are handed to the sink on the event loop.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import functools
import json
import os
import re
import shutil
import signal
import tempfile
import threading
import traceback
import warnings
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import structlog
from pydantic import ValidationError

from runners.base import (
    AdoptingRunner,
    HeldRunHandle,
    Outcome,
    OutputSink,
    RemainsKeeper,
    Runner,
    RunResult,
    RunSpec,
)
from runners.docker_config import (
    FILES_PREFIX,
    RUN_LABEL,
    DockerOptions,
    container_config,
    files_dir,
    our_files,
    outside_entrypoint,
)
from runners.errors import RunnerError
from runners.outcome import completed, ended, failure_message, signal_name
from runners.output import Outlet, ThreadHandoff, cut_lines
from runners.threads import in_thread

log = structlog.get_logger(__name__)

T = TypeVar("T")
#: After the container exits, how long its log streams may take to deliver the rest.
DRAIN_TIMEOUT = 5.0


class DockerRunner:
    """Runs each flow run in a container, removed once the agent has recorded its outcome."""

    name: ClassVar[str] = "docker"
    # A held run's container is created at once and started once released.
    starts_held: ClassVar[bool] = True
    Options: ClassVar[type[DockerOptions]] = DockerOptions

    @staticmethod
    def kill_orphan(info: dict[str, Any]) -> bool:
        """SIGKILL a run's container (runners/base.py, OrphanKiller); False if it had ended, is
        gone, or dockerd cannot be reached. A container that exited is left as it is: its exit
        status and result file say how the run ended, for the agent's next life to report
        (:meth:`discard_remains` removes it then). One created but never started is removed:
        its flow never began, and it never will."""
        docker, client = _orphan_client()
        if client is None:
            return False
        try:
            container = client.containers.get(str(info["container_id"]))
            if container.status == "created":
                container.remove(force=True)
                return True
            if container.status not in _ALIVE:
                return False
            container.kill()  # 409 if it exited meanwhile: then it ended on its own
            return True
        except (docker.errors.DockerException, KeyError):
            return False
        finally:
            client.close()

    @staticmethod
    def discard_remains(info: dict[str, Any], *, keep_outcome: bool = False) -> None:
        """Remove a run's container, if the run asked for that (``auto_remove``), and its files
        directory (runners/base.py, RemainsKeeper). ``keep_outcome`` changes nothing here: a
        killed container's status says only that it was killed."""
        if info.get("auto_remove"):
            docker, client = _orphan_client()
            if client is not None:
                try:
                    client.containers.get(str(info["container_id"])).remove(force=True)
                except (docker.errors.DockerException, KeyError) as exc:
                    if not isinstance(exc, docker.errors.NotFound):
                        log.warning("docker_remove_failed", info=_shown(info), error=str(exc))
                finally:
                    client.close()
        if (files := our_files(info.get("files"))) is not None:
            shutil.rmtree(files, ignore_errors=True)

    def __init__(self) -> None:
        self._client: Any = None  # docker.DockerClient, made on first use (it must reach dockerd)
        self._client_lock = threading.Lock()

    async def start(self, spec: RunSpec, sink: OutputSink) -> DockerHandle:
        options = _options(spec)
        if options.mount_working_dir and not spec.working_dir.is_dir():
            raise RunnerError(f"working directory not found: {spec.working_dir}")
        if (spec.entrypoint is None) == (spec.command is None):
            raise RunnerError("a run needs exactly one of an entrypoint or a command")
        outside = outside_entrypoint(spec.entrypoint, spec.working_dir.resolve())
        if options.mount_working_dir and outside is not None:
            raise RunnerError(outside)
        try:
            parameters = json.dumps(spec.parameters)
        except (TypeError, ValueError) as exc:
            raise RunnerError(f"the run's parameters are not JSON-serialisable: {exc}") from None
        client = await in_thread(self._connect, "docker-connect")
        files = Path(tempfile.mkdtemp(prefix=FILES_PREFIX))
        try:
            # A file, not a directory, is mounted: the container's user may be anyone, and only
            # this file (mode 0666) becomes writable to it; the 0700 directory keeps others out.
            result_file = files / "result.json"
            result_file.touch(mode=0o666)
            result_file.chmod(0o666)
            config = container_config(spec, options, parameters, result_file)
            creating = in_thread(lambda: _create(client, options, config), "docker-create")
            try:
                container = await asyncio.shield(creating)
            except asyncio.CancelledError:  # the container may yet appear: nobody would remove it
                creating.add_done_callback(_remove_if_created)
                raise
        except BaseException:
            shutil.rmtree(files, ignore_errors=True)
            raise
        handle = DockerHandle(client, container, sink, options, files)
        if spec.held:
            handle._held = f"run-{spec.run_id}"
        else:
            await handle._begin(f"run-{spec.run_id}")
        return handle

    async def adopt(self, spec: RunSpec, info: dict[str, Any], sink: OutputSink) -> DockerHandle:
        """Supervise again the container an earlier life of the agent started for ``spec``."""
        options = _options(spec)
        since = info.get("output_since")
        since = float(since) if isinstance(since, int | float) and since > 0 else None
        recorded = info.get("files")
        client = await in_thread(self._connect, "docker-connect")
        container_id = str(info.get("container_id") or "") or None
        find = functools.partial(_find, client, spec, container_id)
        container = await in_thread(find, "docker-find")
        if container is None:
            # Nothing will ever read its result file now; the record says where it is.
            if (files := our_files(recorded)) is not None:
                shutil.rmtree(files, ignore_errors=True)
            known = f"container {container_id[:12]} is gone and no" if container_id else "no"
            raise RunnerError(f"{known} container carries the label {RUN_LABEL}={spec.run_id}")
        files = files_dir(container.attrs) or our_files(recorded)
        if files is None:
            raise RunnerError(
                f"container {container.name} has no result file of flowagent's: cannot adopt it"
            )
        handle = DockerHandle(client, container, sink, options, files, since=since)
        if container.status == "created":  # never started: it has no outcome to report
            await handle._cleanup(remove=True)
            raise RunnerError(f"container {container.name} was created but never started")
        log.info("docker_run_adopted", container=container.name, status=container.status)
        handle._watch(f"run-{spec.run_id}")
        return handle

    def _connect(self) -> Any:
        docker = _import_sdk()
        with self._client_lock:
            if self._client is None:
                try:
                    # Two long-lived connections per run (stdout and stderr logs) plus calls.
                    self._client = docker.from_env(max_pool_size=256)
                except Exception as exc:
                    raise _translate(exc, "connect") from None
                # Runners have no close(): the pooled connections go when the runner does.
                weakref.finalize(self, self._client.close)
            return self._client


def _options(spec: RunSpec) -> DockerOptions:
    try:
        return DockerOptions.model_validate(spec.options)
    except ValidationError as exc:
        raise RunnerError(f"invalid docker runner options: {exc}") from None


def _find(client: Any, spec: RunSpec, container_id: str | None) -> Any:
    """The run's container: by id, else by its run-id label; None when it is gone.

    Raises :class:`RunnerError` when the id names another run's container.
    """
    docker = _import_sdk()
    run_id = str(spec.run_id)
    try:
        if container_id is not None:
            with contextlib.suppress(docker.errors.NotFound):
                container = client.containers.get(container_id)
                owner = container.labels.get(RUN_LABEL)
                if owner != run_id:
                    raise RunnerError(
                        f"container {container_id[:12]} is not this run's"
                        f" (its {RUN_LABEL} label is {owner!r}, not {run_id!r})"
                    )
                return container
        found = client.containers.list(all=True, filters={"label": f"{RUN_LABEL}={run_id}"})
    except Exception as exc:
        raise _translate(exc, "find the run's container") from None
    if not found:
        return None

    # A retried run's earlier attempts may have left containers (auto_remove=false): prefer the
    # one carrying all of this attempt's labels, then a running one, then the newest.
    def rank(container: Any) -> tuple[bool, bool, str]:
        labels = container.labels
        same = all(labels.get(k) == v for k, v in spec.labels.items())
        return same, container.status == "running", str(container.attrs.get("Created", ""))

    return max(found, key=rank)


_ALIVE = frozenset({"running", "paused", "restarting"})


def _orphan_client() -> tuple[Any, Any]:
    """The SDK module and a client of its own, for the fence's calls from outside the agent;
    no client when the SDK or dockerd is missing (nothing can be done from here then)."""
    try:
        docker = _import_sdk()
        return docker, docker.from_env(timeout=10)
    except Exception:
        return None, None


def _shown(info: dict[str, Any]) -> str:
    return str(info.get("container_name") or info.get("container_id"))


def _remove_if_created(creating: asyncio.Future[Any]) -> None:
    if not creating.cancelled() and creating.exception() is None:
        container = creating.result()
        threading.Thread(target=container.remove, kwargs={"force": True}, daemon=True).start()


def _create(client: Any, options: DockerOptions, config: dict[str, Any]) -> Any:
    docker = _import_sdk()
    image = options.image
    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        if not options.pull:
            raise RunnerError(
                f"image {image!r} not found locally: build it or docker pull it",
                hint="or set the runner option pull=true to let the agent pull it",
            ) from None
        log.info("docker_image_pulling", image=image)
        try:
            client.images.pull(image)
        except Exception as exc:
            error = _translate(exc, "pull the image")
            raise RunnerError(f"cannot pull image {image!r}: {error.message}") from None
    except Exception as exc:
        raise _translate(exc, "look up the image") from None
    try:
        return client.containers.create(**config)
    except Exception as exc:
        raise _translate(exc, "create the container") from None


class DockerHandle:
    """One container, started by :meth:`DockerRunner.start` or adopted by :meth:`~.adopt`."""

    def __init__(
        self,
        client: Any,
        container: Any,
        sink: OutputSink,
        options: DockerOptions,
        files: Path,
        *,
        since: float | None = None,
    ) -> None:
        self._client = client
        self._container = container
        self._options = options
        self._files = files
        self._since = since  # replay the logs from this Unix time (an adopted run), else all
        self._loop = asyncio.get_running_loop()
        self._outlet = Outlet(sink, container=container.name)
        self._streams: list[Any] = []  # the SDK's log streams, closed if they outlive the run
        self._followers: list[asyncio.Future[None]] = []
        self._done: asyncio.Future[RunResult] | None = None
        # Lines go from the log-following threads to the loop a bounded amount at a time.
        self._handoff = ThreadHandoff(self._loop, self._deliver, sink)
        self._delivered = 0  # lines handed to the sink: a draining log still making progress
        self._held: str | None = None  # a held run's name until it is released (started)

    @property
    def info(self) -> dict[str, Any]:
        return {
            "container_id": self._container.id,
            "container_name": self._container.name,
            "image": self._options.image,
            "files": str(self._files),  # its result file, for adopt()
            # Whoever stops a run nobody will adopt (the fence) should remove it as we would.
            "auto_remove": self._options.auto_remove,
        }

    async def _begin(self, name: str) -> None:
        try:
            await in_thread(self._container.start, f"{name}-start")
        except BaseException as exc:
            await self._cleanup(remove=True)
            if isinstance(exc, RunnerError | asyncio.CancelledError):
                raise
            raise _translate(exc, "start the container") from None
        self._watch(name)

    def _watch(self, name: str) -> None:
        """Follow the container's output and supervise it until it ends."""
        for stream in ("stdout", "stderr"):
            follow = functools.partial(self._follow, stream)
            self._followers.append(in_thread(follow, f"{name}-{stream}"))
        self._done = self._loop.create_task(self._supervise(), name=f"{name}-supervise")

    async def wait(self) -> RunResult:
        assert self._done is not None, "DockerHandle is made by DockerRunner.start or adopt"
        # Shielded: a caller giving up on waiting must not stop the supervision.
        return await asyncio.shield(self._done)

    async def release(self) -> None:
        if self._held is not None:
            name, self._held = self._held, None
            await self._begin(name)

    async def interrupt(self) -> None:
        await self._kill("SIGTERM")  # not container.stop(): that also SIGKILLs, on its own clock

    async def terminate(self) -> None:
        await self._kill("SIGKILL")

    async def _kill(self, sig: str) -> None:
        if self._held is not None:  # never started: it goes, and its flow never begins
            self._held = None
            await self._cleanup(remove=True)
            self._done = self._loop.create_future()
            self._done.set_result(RunResult(Outcome.CRASHED, "stopped before its flow began"))
            return
        if self._done is None or self._done.done():
            return
        with contextlib.suppress(Exception):  # exited meanwhile (409), removed (404)…
            await in_thread(lambda: self._container.kill(signal=sig), "docker-kill")

    async def _supervise(self) -> RunResult:
        try:
            status = await in_thread(self._container.wait, "docker-wait")
            if not await self._drained():
                log.warning("run_output_abandoned", container=self._container.name)
                self._close_streams()
                await asyncio.wait(self._followers)
            await in_thread(self._container.reload, "docker-inspect")
            state = self._container.attrs.get("State", {})
            result = self._result(status, state, self._read_result_file())
        except asyncio.CancelledError:
            # The agent's loop is going away without ending the run (asyncio.run cancels what
            # is left): the container runs on, with its files, for a later life to adopt.
            log.info("docker_run_left", container=self._container.name)
            self._close_streams()
            raise
        except Exception as exc:
            error = exc if isinstance(exc, RunnerError) else _translate(exc, "watch the container")
            log.warning("docker_run_lost", container=self._container.name, error=error.message)
            result = RunResult(Outcome.CRASHED, f"lost track of the container: {error.message}")
            self._close_streams()
        # The container and its files stay: until the agent has recorded the outcome, they are
        # the only record of it (DockerRunner.discard_remains removes them after).
        return result

    async def _drained(self) -> bool:
        """Whether the log streams delivered everything: the container has exited, so its log
        is finite, but a full sink paces it (runners/output.py); only ``DRAIN_TIMEOUT`` seconds
        without a line delivered mean a stream is stuck."""
        while True:
            before = self._delivered
            _, late = await asyncio.wait(self._followers, timeout=DRAIN_TIMEOUT)
            if not late:
                return True
            if self._delivered == before:
                return False

    def _close_streams(self) -> None:
        self._handoff.close()
        for stream in self._streams:
            with contextlib.suppress(Exception):
                stream.close()

    async def _cleanup(self, *, remove: bool) -> None:
        if remove:
            try:
                await in_thread(lambda: self._container.remove(force=True), "docker-remove")
            except Exception as exc:
                log.warning("docker_remove_failed", container=self._container.name, error=str(exc))
        shutil.rmtree(self._files, ignore_errors=True)

    def _follow(self, stream: str) -> None:
        """Runs in a thread: hands the container's ``stream`` to the sink, line by line."""
        try:
            logs = self._client.api.logs(
                self._container.id,
                stdout=stream == "stdout",
                stderr=stream == "stderr",
                stream=True,
                follow=True,
                since=self._since,
            )
        except Exception as exc:  # e.g. a log driver that cannot be read back
            self._emit("stderr", f"flowagent: cannot read the container's {stream}: {exc}")
            return
        self._streams.append(logs)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        try:
            for line in _lines((decoder.decode(chunk) for chunk in logs), decoder):
                self._emit(stream, line)
        finally:
            logs.close()  # its connection is not pooled again: close it rather than leak it

    def _emit(self, stream: str, line: str) -> None:
        """In a follower thread: waits while the sink is full, so Docker keeps the rest."""
        self._outlet.note(stream, line)
        self._handoff.wait_for_room()
        self._handoff.put(stream, line)

    def _deliver(self, stream: str, line: str) -> None:
        self._delivered += 1
        self._outlet.deliver(stream, line)

    def _read_result_file(self) -> dict[str, Any] | None:
        try:
            text = (self._files / "result.json").read_text(encoding="utf-8")
            document = json.loads(text or "null")
        except (OSError, ValueError):
            return None
        return document if isinstance(document, dict) else None

    def _result(
        self, status: dict[str, Any], state: dict[str, Any], document: dict[str, Any] | None
    ) -> RunResult:
        code = int(status.get("StatusCode", -1))
        if state.get("OOMKilled"):
            limit = self._options.memory
            outcome, headline = Outcome.CRASHED, f"out of memory (limit {limit})"
            if limit is None:
                headline = "out of memory"
        elif code == 0:
            return completed(document)
        elif (error := (status.get("Error") or {}).get("Message")) or code < 0:
            outcome, headline = Outcome.CRASHED, f"the container failed: {error or code}"
        elif 128 < code < 128 + signal.NSIG and not (document and document.get("ok") is False):
            # docker-init exits 128+N for a signal N
            outcome, headline = Outcome.CRASHED, f"killed by signal {signal_name(code - 128)}"
        else:
            outcome, headline = Outcome.FAILED, failure_message(code, document)
        return ended(outcome, headline, code, self._outlet.stderr_tail)


def _lines(chunks: Iterable[str], decoder: codecs.IncrementalDecoder) -> Iterable[str]:
    buffer = ""
    for text in chunks:
        lines, buffer = cut_lines(buffer + text)
        yield from (line.removesuffix("\r") for line in lines)
    buffer += decoder.decode(b"", final=True)
    if buffer:
        yield buffer.removesuffix("\r")


def _import_sdk() -> Any:
    try:
        import docker  # type: ignore[import-untyped]
    except ImportError:
        raise RunnerError(
            "the docker runner needs the docker SDK, which is not installed",
            hint="pip install 'flowagent[docker]'",
        ) from None
    return docker


def _translate(exc: BaseException, doing: str) -> RunnerError:
    """A docker SDK (or requests) exception in words that say what to do."""
    if isinstance(exc, RunnerError):
        return exc
    docker = _import_sdk()
    import requests  # the SDK's own dependency

    host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    unreachable = isinstance(exc, requests.exceptions.ConnectionError) or (
        isinstance(exc, docker.errors.DockerException)
        and not isinstance(exc, docker.errors.APIError)
        and "Connection" in str(exc)
    )
    if unreachable:
        _free_failed_socket(exc)
        return RunnerError(
            f"cannot reach the Docker daemon ({host}: {_root_cause(exc)}): "
            "is dockerd running? is DOCKER_HOST right?"
        )
    if isinstance(exc, docker.errors.APIError):
        return RunnerError(f"Docker refused to {doing}: {exc.explanation or exc}")
    return RunnerError(f"Docker error while trying to {doing}: {exc}")


def _free_failed_socket(exc: BaseException) -> None:
    """The SDK does not close a socket whose connect() failed; its frames still hold it. Clear
    them now (quietly) rather than have it reported as unclosed whenever the error is dropped."""
    seen: set[int] = set()
    error: BaseException | None = exc
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        while error is not None and id(error) not in seen:
            seen.add(id(error))
            if error.__traceback__ is not None:
                traceback.clear_frames(error.__traceback__)
            error = error.__cause__ or error.__context__


def _root_cause(exc: BaseException) -> str:
    """The innermost reason ("No such file or directory", "Permission denied"), not the wrapping."""
    text = str(exc)
    found = re.search(r"\w+Error\(\d+, '([^']*)'\)", text)
    return found.group(1) if found else text


if TYPE_CHECKING:  # mypy proves the classes meet the protocols third-party runners implement
    _runner: Runner = DockerRunner()
    _adopting: AdoptingRunner = DockerRunner()
    _keeper: RemainsKeeper = DockerRunner()
    _handle: type[HeldRunHandle] = DockerHandle
