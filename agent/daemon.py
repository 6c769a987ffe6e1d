"""The agent daemon: poll → claim → launch → supervise → report, with side tasks."""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from agent.config import Settings


@dataclass(frozen=True)
class AgentOptions:
    """What `agent start` was asked to do (settings hold everything else)."""

    queue_id: UUID
    name: str
    tags: tuple[str, ...] = ()
    run_once: bool = False


def run_agent(settings: Settings, options: AgentOptions) -> int:
    """Run the daemon until it is stopped; returns the process exit code.

    Raises :class:`agent.errors.FlowAgentError` for problems the user must fix (no such queue,
    server unreachable after the startup bound, credentials refused).
    """
    raise NotImplementedError("being written")
