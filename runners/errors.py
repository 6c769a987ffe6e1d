"""The errors runners raise: the root of flowagent's one error tree and the runners' branch.

They live here, not in agent/errors.py (which re-exports them and grows the rest of the tree), so
that ``runners`` — ours and third parties' — import nothing of the daemon: a runner raises
:class:`RunnerError` with ``from runners.errors import RunnerError``.
"""

from __future__ import annotations


class FlowAgentError(Exception):
    """Root of every error flowagent raises on purpose.

    ``hint`` tells the user what to do about it; the CLI prints it under the message.
    """

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class InputError(FlowAgentError):
    """The user gave input we cannot use."""


class RunnerError(FlowAgentError):
    """A runner could not start or supervise a run."""


class UnknownRunner(RunnerError):
    """No runner is installed under the requested name."""
