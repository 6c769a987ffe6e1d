"""Flows the contract suite runs with every runner. Plain Python: nothing of flowagent imported,
since the Docker runner runs them in an image that has only Python."""

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from pathlib import Path


def add(a: int, b: int) -> dict[str, int]:
    print(f"adding {a} and {b}")
    return {"sum": a + b}


async def add_async(a: int, b: int) -> int:
    await asyncio.sleep(0.01)
    print(f"async adding {a} and {b}")
    return a + b


def where() -> dict[str, str | None]:
    print(f"cwd={os.getcwd()}")
    return {"cwd": os.getcwd(), "CONTRACT_VAR": os.environ.get("CONTRACT_VAR")}


def chatty(name: str, lines: int = 50) -> str:
    for i in range(lines):
        print(f"{name} out {i}")
        print(f"{name} err {i}", file=sys.stderr)
        time.sleep(0.001)  # let concurrent runs interleave
    return name


def wait_for_marker(marker: str) -> str:
    print("waiting on stdout", flush=True)
    print("waiting on stderr", file=sys.stderr, flush=True)
    deadline = time.monotonic() + 30
    while not Path(marker).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(marker)
        time.sleep(0.02)
    print("marker found")
    return "done"


def boom(message: str = "boom") -> None:
    print("about to fail", file=sys.stderr)
    raise ValueError(message)


def exit_with(code: int) -> None:
    print(f"exiting with {code}", file=sys.stderr)
    sys.exit(code)


def kill_self() -> None:
    print("killing myself", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def hog_memory(megabytes: int = 512) -> None:
    print("allocating", flush=True)
    chunks = [bytearray(1024 * 1024) for _ in range(megabytes)]
    print(f"allocated {len(chunks)} MiB")


def trap_sigterm() -> None:
    """Cleans up and exits when interrupted (a process runner's SIGTERM)."""

    def on_term(signum: int, frame: object) -> None:
        print("cleaning up", flush=True)
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_term)
    print("sleeping", flush=True)
    time.sleep(60)


async def cancellable() -> None:
    """Cleans up when interrupted (the in-process runner cancels the task)."""
    print("sleeping", flush=True)
    try:
        await asyncio.sleep(60)
    finally:
        print("cleaning up", flush=True)


def ignore_sigterm(seconds: float = 60) -> None:
    """Only terminate (SIGKILL) stops it; in-process, nothing does until it returns."""
    # Not the main thread in-process: there, signals are not the flow's to take.
    with contextlib.suppress(ValueError):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("sleeping", flush=True)
    time.sleep(seconds)


def log_records(name: str) -> str:
    """logging with nothing configured: warnings and up reach stderr, as in any Python."""
    logger = logging.getLogger(f"flows.{name}")
    logger.info("not shown: below the default level")
    logger.warning("%s warns", name)
    return name


def configure_logging(name: str) -> str:
    """A flow that configures logging for itself, as scripts do."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger(f"flows.{name}").info("%s informs", name)
    return name


def stamp() -> float:
    """The flow's first act: when it began (the host's clock; containers share it)."""
    began = time.time()
    print("began")
    return began


def print_lines(count: int, width: int) -> int:
    """``count`` numbered lines of ``width`` characters, as fast as it can."""
    for i in range(count):
        print(f"{i:08d} " + "x" * (width - 9))
    return count


def long_line(before: int, text: str) -> int:
    """One line: ``before`` filler characters, then ``text``, then more filler."""
    print("x" * before + text + "y" * 1000)
    return before
