"""The flows the conformance suite deploys on every server.

The same file serves both: under Prefect's engine (a venv with prefect) each function is a
Prefect flow; under our bootstrap (the agent's venv, no prefect) it is a plain function.
"""

import os
import time
from pathlib import Path

try:
    from prefect import flow
except ImportError:  # our server's runs: plain functions

    def flow(fn):  # type: ignore[no-untyped-def]
        return fn


def _run_id() -> str:
    return os.environ.get("PREFECT__FLOW_RUN_ID") or os.environ["FLOWAGENT_RUN_ID"]


@flow
def add(a: int, b: int) -> int:
    print(f"adding {a} and {b}", flush=True)
    return a + b


@flow
def mark(marker_dir: str) -> str:
    """One marker file per execution, so a test counts how often each run was executed."""
    run_id = _run_id()
    (Path(marker_dir) / f"{run_id}-{os.getpid()}").write_text(run_id)
    return run_id


@flow
def sleep(seconds: float = 60) -> None:
    print(f"sleeping {seconds}s", flush=True)
    time.sleep(seconds)


@flow
def until_exists(path: str) -> None:
    """End once ``path`` exists: a test decides when the run ends, not a clock."""
    while not Path(path).exists():
        time.sleep(0.05)
