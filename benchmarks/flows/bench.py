"""The flows every benchmark deploys, on our server and on Prefect's.

Under Prefect's engine (an interpreter with prefect) each function is a Prefect flow; under our
bootstrap or the in-process runner (no prefect) it is a plain function. Timestamps are wall-clock
``time.time()``: the harness runs on the same machine and compares them with its own.
"""

import os
import time

# Only for type checkers: a flow's imports count in every pickup, and typing costs milliseconds.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar

    _F = TypeVar("_F", bound=Callable[..., Any])

try:
    from prefect import flow as _prefect_flow  # type: ignore[import-not-found, unused-ignore]
except ImportError:  # our runners: plain functions
    _prefect_flow = None


def flow(fn: "_F") -> "_F":
    """Prefect's ``@flow`` where prefect is installed, else the function as it is."""
    return fn if _prefect_flow is None else _prefect_flow(fn)  # type: ignore[no-any-return, unused-ignore]


def _stamp(out: str) -> None:
    """The flow's first act: write when it started, to a file named by the run's id."""
    now = time.time()
    run_id = os.environ.get("PREFECT__FLOW_RUN_ID") or os.environ["FLOWAGENT_RUN_ID"]
    fd = os.open(os.path.join(out, run_id), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, repr(now).encode())
    finally:
        os.close(fd)


@flow
def first_act(out: str) -> None:
    _stamp(out)


@flow
def noop() -> None:
    pass


async def noop_async() -> None:
    pass


@flow
def hold(out: str, release: str, limit: float = 600.0) -> None:
    """Started, then asleep until the file ``release`` exists (at most ``limit`` seconds)."""
    _stamp(out)
    deadline = time.monotonic() + limit
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.5)


@flow
def ticks(count: int = 50, every: float = 0.2) -> None:
    """Print ``tick <wall-clock time>`` ``count`` times: a reader compares when it saw each."""
    for _ in range(count):
        print(f"tick {time.time()!r}", flush=True)
        time.sleep(every)
