"""Re-adoption: an agent restarted within its lease takes over the runs its earlier life left.

The fence's list (``agent/fence.py``) outlives the agent and says, for each run still executing,
which claimed run it is and how its runner can find it again (pid and start time, container id).
A run is taken over only when the server still has it as ours, in the same attempt, RUNNING or
CANCELLING: otherwise the server has already resolved it (and may have retried it elsewhere), so
the old execution is killed at once; it must not run twice. What the runner cannot find is
reported CRASHED by the supervisor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from pydantic import ValidationError

from agent.fence import FenceDir
from agent.models import ClaimedRun, FlowRun, StateType

#: How far before the earlier life's last lease renewal a runner replays output from: lines are
#: shipped every fraction of a second, so older ones had surely gone (a line may come twice).
OUTPUT_REPLAY_SECONDS = 2.0
ADOPTABLE_STATES = (StateType.RUNNING, StateType.CANCELLING)


@dataclass(frozen=True)
class Leftover:
    """A run an earlier life of this agent started and listed with the fence."""

    run_id: UUID
    listed: dict[str, Any]  # the fence's entry: enough to kill it
    claimed: ClaimedRun | None = None  # None: an entry without what adoption needs
    info: dict[str, Any] | None = None  # the runner's handle info, plus output_since
    started_at: float = 0.0  # Unix time the run's process started


def adoption_record(claimed: ClaimedRun, info: dict[str, Any], started_at: float) -> dict[str, Any]:
    """What the supervisor lists with the fence when it starts a run."""
    return {"claimed": claimed.model_dump(mode="json"), "info": info, "started_at": started_at}


def find_leftovers(fence: FenceDir) -> list[Leftover]:
    """Read the fence's list; call before this life renews the lease (it dates the output)."""
    renewed = fence.lease_renewed_at()
    found = []
    for run_id, listed in fence.registered().items():
        record = listed.get("adoption") or {}
        try:
            claimed = ClaimedRun.model_validate(record["claimed"])
            info = dict(record["info"])
            started_at = float(record["started_at"])
        except (TypeError, KeyError, ValueError, ValidationError):
            found.append(Leftover(run_id, listed))  # from an older version, or damaged
            continue
        if renewed is not None:
            info["output_since"] = renewed - OUTPUT_REPLAY_SECONDS
        found.append(Leftover(run_id, listed, claimed, info, started_at))
    return found


def still_ours(leftover: Leftover, held: dict[UUID, FlowRun]) -> str | None:
    """Why ``leftover`` must not be taken over, or None when it may."""
    if leftover.claimed is None:
        return "no record of how to supervise it again"
    run = held.get(leftover.run_id)
    if run is None:
        return "the server no longer has it as this agent's"
    if run.attempt != leftover.claimed.flow_run.attempt:
        return f"the server is on attempt {run.attempt} of it"
    if run.state.type not in ADOPTABLE_STATES:
        return f"the server has it {run.state.type.value}"
    return None
