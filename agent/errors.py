"""The one error tree of flowagent.

    FlowAgentError                      every error we raise on purpose
    ├── ConfigError                     a bad flag, env var or config file value
    ├── InputError                      bad user input (not a UUID, malformed deployment file…)
    ├── DamagedFile                     a file the agent keeps (spool) is truncated or not its own
    ├── ApiError                        the work-queue API answered with an error
    │   ├── NotFound                    404: no such queue / deployment / run
    │   ├── Conflict                    409: an impossible state transition, a duplicate name
    │   ├── AuthError                   401/403: unrecoverable, the agent stops
    │   └── ServerUnavailable           connection refused, timeout, 429/502/503/504 after retries
    ├── RunnerError                     a runner could not start or supervise a run
    │   └── UnknownRunner               no runner installed under that name
    └── SourceError                     a run's code could not be fetched (the run FAILS)
        └── TransientSourceError        a network hiccup: retried with backoff first

Recoverable API errors (ServerUnavailable) are retried with backoff before they surface;
AuthError never is. A lost claim race is not an error at all: the server simply does not hand
the run out.
"""

from __future__ import annotations

# The root and the runners' branch live with the runners, which import nothing of the agent.
from runners.errors import FlowAgentError, InputError, RunnerError, UnknownRunner

__all__ = [
    "ApiError",
    "AuthError",
    "ConfigError",
    "Conflict",
    "DamagedFile",
    "FlowAgentError",
    "InputError",
    "NotFound",
    "RunnerError",
    "ServerUnavailable",
    "UnknownRunner",
]


class ConfigError(FlowAgentError):
    """A setting has a bad value or an unknown key."""


class DamagedFile(FlowAgentError):
    """A file the agent wrote for later (a spooled report) cannot be read back; set aside."""


class ApiError(FlowAgentError):
    """The work-queue API answered with an error status."""

    def __init__(self, message: str, *, status_code: int | None = None, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.status_code = status_code


class NotFound(ApiError):
    """The resource does not exist (HTTP 404)."""


class Conflict(ApiError):
    """The server refused the change (HTTP 409), e.g. a transition out of a terminal state."""


class AuthError(ApiError):
    """The server refused our credentials (HTTP 401/403). Never retried."""


class ServerUnavailable(ApiError):
    """The server could not be reached or kept answering 429/5xx after every retry."""


class SourceError(FlowAgentError):
    """A deployment's code (a git source) could not be fetched or checked out for a run.

    The run is FAILED with the message; the agent goes on.
    """


class TransientSourceError(SourceError):
    """A failure that may pass (connection refused, timeout, 5xx): retried with backoff."""
