"""Re-adoption: an agent restarted within its lease takes over the runs its earlier life left.

The fence's list (``agent/fence.py``) outlives the agent and says, for each run still executing,
which claimed run it is and how its runner can find it again (pid and start time, container id).
A run is taken over only when the server still has it as ours, in the same attempt, RUNNING or
CANCELLING: otherwise the server has already resolved it (and may have retried it elsewhere), so
the old execution is killed at once; it must not run twice. What the runner cannot find is
reported CRASHED by the supervisor.

An entry may also say the run never got that far, or went past it: listed while starting (its
flow never began: runs start held and begin only once fully listed), run inside the agent's own
process (it ended with the agent), or ended with its outcome recorded (the agent died before the
server heard it: the outcome is reported now, and the run is not executed again).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from uuid import UUID

from pydantic import ValidationError

from agent.fence import FenceDir
from agent.models import ClaimedRun, FlowRun, StateProposal, StateType

#: How far before the earlier life's last lease renewal a runner replays output from: lines are
#: shipped every fraction of a second, so older ones had surely gone (a line may come twice).
OUTPUT_REPLAY_SECONDS = 2.0
ADOPTABLE_STATES = (StateType.RUNNING, StateType.CANCELLING)


class Stage(StrEnum):
    """How far an earlier life got with a run, by its fence entry."""

    STARTING = "starting"  # listed before its runner started it: its flow never began
    EXECUTING = "executing"  # its process (or container) was started: it may run still
    IN_AGENT = "in agent"  # it ran inside the agent's process, and ended with it
    ENDED = "ended"  # it ended, and the agent recorded the outcome it was about to report
    UNKNOWN = "unknown"  # an entry from an older version, or damaged


@dataclass(frozen=True)
class Leftover:
    """A run an earlier life of this agent started and listed with the fence."""

    run_id: UUID
    listed: dict[str, Any]  # the fence's entry: enough to kill it
    claimed: ClaimedRun | None = None  # None: an entry without what adoption needs
    info: dict[str, Any] | None = None  # the runner's handle info, plus output_since
    started_at: float = 0.0  # Unix time the run's process started
    stage: Stage = Stage.UNKNOWN

    @property
    def outcome(self) -> StateProposal | None:
        """The report an earlier life had decided on, for an ENDED run."""
        if self.stage is not Stage.ENDED:
            return None
        return StateProposal.model_validate(self.listed["outcome"])


def adoption_record(
    claimed: ClaimedRun, info: dict[str, Any] | None = None, started_at: float = 0.0
) -> dict[str, Any]:
    """What the supervisor lists with the fence when it starts a run (no ``info`` yet while
    starting)."""
    record: dict[str, Any] = {"claimed": claimed.model_dump(mode="json")}
    if info is not None:
        record |= {"info": info, "started_at": started_at}
    return record


def find_leftovers(fence: FenceDir) -> list[Leftover]:
    """Read the fence's list; call before this life renews the lease (it dates the output)."""
    renewed = fence.lease_renewed_at()
    found = []
    for run_id, listed in fence.registered().items():
        record = listed.get("adoption") or {}
        try:
            claimed = ClaimedRun.model_validate(record["claimed"])
            if listed.get("ended"):
                StateProposal.model_validate(listed["outcome"])
                found.append(Leftover(run_id, listed, claimed, stage=Stage.ENDED))
                continue
            if listed.get("starting"):
                found.append(Leftover(run_id, listed, claimed, stage=Stage.STARTING))
                continue
            if listed.get("in_agent"):
                found.append(Leftover(run_id, listed, claimed, stage=Stage.IN_AGENT))
                continue
            info = dict(record["info"])
            started_at = float(record["started_at"])
        except (TypeError, KeyError, ValueError, ValidationError):
            found.append(Leftover(run_id, listed))  # from an older version, or damaged
            continue
        if renewed is not None:
            info["output_since"] = renewed - OUTPUT_REPLAY_SECONDS
        found.append(Leftover(run_id, listed, claimed, info, started_at, Stage.EXECUTING))
    return found


def still_ours(leftover: Leftover, held: dict[UUID, FlowRun]) -> str | None:
    """Why the server no longer has ``leftover`` as this agent's, or None when it does."""
    if leftover.claimed is None:
        return "no record of which attempt it was"
    run = held.get(leftover.run_id)
    if run is None:
        return "the server no longer has it as this agent's"
    if run.attempt != leftover.claimed.flow_run.attempt:
        return f"the server is on attempt {run.attempt} of it"
    if run.state.type not in ADOPTABLE_STATES:
        return f"the server has it {run.state.type.value}"
    return None


def lost_message(leftover: Leftover, agent_name: str, *, killed: bool, held_start: bool) -> str:
    """Why a run the server still has RUNNING under this agent is CRASHED, as it happened."""
    restarted = f"agent {agent_name} restarted"
    if leftover.stage is Stage.STARTING:
        if held_start:
            return f"{restarted}: it died while starting the run, before the flow began"
        return f"{restarted}: it died while starting the run; nothing of it was found to stop"
    if leftover.stage is Stage.IN_AGENT:
        return f"{restarted}: the run executed inside the agent's process and ended with it"
    if killed:
        return f"{restarted} without a record to take the run over; its process was killed"
    return f"{restarted} without a record to take the run over; its process had ended"
