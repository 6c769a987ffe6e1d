"""Flows the integration tests deploy. Plain Python: nothing of flowagent imported."""

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
