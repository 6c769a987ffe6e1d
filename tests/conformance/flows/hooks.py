"""A flow with every state hook a worker (not the engine) runs: the hooks count themselves.

Each hook appends one line to ``<marker_dir>/<run id>.<hook>`` (the state it saw and its
process), so a test tells which hooks ran, how often, and that they ran in a process of their
own after the flow's was gone.
"""

import os
import time
from pathlib import Path
from typing import Any

from prefect import flow


def _mark(kind: str) -> Any:
    def hook(flow: Any, flow_run: Any, state: Any) -> None:
        path = Path(flow_run.parameters["marker_dir"], f"{flow_run.id}.{kind}")
        with path.open("a") as out:
            out.write(f"{state.type.value} {os.getpid()}\n")

    hook.__name__ = f"mark_{kind}"
    return hook


@flow(on_cancellation=[_mark("cancellation")], on_crashed=[_mark("crashed")])
def hooked(marker_dir: str, seconds: float = 120) -> None:
    run_id = os.environ["PREFECT__FLOW_RUN_ID"]
    env = {k: v for k, v in os.environ.items() if k.startswith("PREFECT__")}
    Path(marker_dir, f"{run_id}.env").write_text("\n".join(f"{k}={v}" for k, v in env.items()))
    for i in range(5):
        print(f"flow output line {i} of {run_id}", flush=True)
    # Written whole or not at all: the test reads it as soon as it exists.
    pending = Path(marker_dir, f"{run_id}.pid.partial")
    pending.write_text(str(os.getpid()))
    pending.rename(pending.with_suffix(""))
    time.sleep(seconds)
