"""Flows the integration tests deploy. Plain Python: nothing of flowagent imported."""

import json
import os
import signal
import sys
import time
from pathlib import Path


def add(a: int, b: int) -> int:
    print(f"adding {a} and {b}")
    return a + b


def boom(message: str = "boom") -> None:
    print("about to fail", file=sys.stderr)
    raise ValueError(message)


def show_env(*names: str) -> dict[str, str | None]:
    values = {name: os.environ.get(name) for name in ("LAYER_A", "LAYER_B", "LAYER_C")}
    print(f"cwd={os.getcwd()}")
    for name, value in values.items():
        print(f"{name}={value}")
    return values


def wait_for_file(marker: str, timeout: float = 30) -> str:
    print("waiting for the marker", flush=True)
    deadline = time.monotonic() + timeout
    while not Path(marker).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(marker)
        time.sleep(0.05)
    print("marker found", flush=True)
    return "done"


def sleep(seconds: float = 60, pidfile: str | None = None) -> None:
    if pidfile:
        Path(pidfile).write_text(str(os.getpid()))
    print(f"sleeping {seconds}s", flush=True)
    time.sleep(seconds)


def kill_self() -> None:
    print("killing myself", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def record(
    marker_dir: str,
    seconds: float = 0.5,
    retry_seconds: float | None = None,
    ignore_sigterm: bool = False,
) -> str:
    """Write one marker per execution: run id, attempt, pid, start, last seen alive, end.

    ``alive`` is refreshed every 50 ms, so an execution killed mid-way still tells until when
    it ran. Attempts after the first sleep ``retry_seconds`` when given.
    """
    if ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    run_id = os.environ["FLOWAGENT_RUN_ID"]
    attempt = int(os.environ["FLOWAGENT_ATTEMPT"])
    if attempt > 1 and retry_seconds is not None:
        seconds = retry_seconds
    path = Path(marker_dir) / f"{run_id}-{attempt}-{os.getpid()}.json"
    mark = {"run": run_id, "attempt": attempt, "pid": os.getpid(), "start": time.time()}
    if "CHAOS_AGENT" in os.environ:  # which agent started it: the chaos suite sets it per agent
        mark["agent"] = os.environ["CHAOS_AGENT"]

    def write() -> None:
        mark["alive"] = time.time()
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(mark))
        tmp.replace(path)

    write()
    print(f"recording {run_id} attempt {attempt}", flush=True)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        write()
    mark["end"] = time.time()
    write()
    return run_id


def phases(marker_dir: str, during: int = 3, result: str = "done") -> dict[str, object]:
    """Print in three phases, each after the test lets it go on by creating a file.

    ``marker_dir/go-1`` and ``go-2`` gate the phases; a marker per execution counts executions.
    """
    marker = Path(marker_dir) / f"exec-{os.getpid()}.json"
    marker.write_text(json.dumps({"pid": os.getpid(), "run": os.environ["FLOWAGENT_RUN_ID"]}))
    print("before", flush=True)
    for gate in ("go-1", "go-2"):
        while not (Path(marker_dir) / gate).exists():
            time.sleep(0.02)
        if gate == "go-1":
            for i in range(during):
                print(f"during {i}", flush=True)
    print("after", flush=True)
    return {"result": result, "pid": os.getpid()}


def fail_first(marker_dir: str, failures: int = 1) -> int:
    """Fail the first ``failures`` attempts, succeed after; one marker file per execution."""
    run_id = os.environ["FLOWAGENT_RUN_ID"]
    attempt = int(os.environ["FLOWAGENT_ATTEMPT"])
    marker = Path(marker_dir) / f"{run_id}-{attempt}-{os.getpid()}.json"
    marker.write_text(json.dumps({"run": run_id, "attempt": attempt, "pid": os.getpid()}))
    print(f"attempt {attempt}", flush=True)
    if attempt <= failures:
        raise RuntimeError(f"attempt {attempt} fails on purpose")
    return attempt


def say(text: str) -> str:
    print(text, flush=True)
    return text
