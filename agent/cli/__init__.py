"""The `agent` command line: the only place that reads flags and the environment."""

from __future__ import annotations

import signal
import sys
from types import FrameType


def _skip_unused_imports() -> None:
    """Keep two libraries from importing what we never use: ~5 MiB of a daemon's RSS.

    httpx imports its own command-line client (click, rich, pygments) whenever those are
    installed, and has a fallback for when they are not: we take the fallback. structlog's
    console renderer imports rich for pretty tracebacks; without it, it prints plain ones. Our
    own commands still import rich when they print a table.
    """
    if "httpx" not in sys.modules:
        sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
    if "structlog" not in sys.modules and "rich" not in sys.modules:
        sys.modules["rich"] = None  # type: ignore[assignment]
        try:
            import structlog  # noqa: F401
        finally:
            del sys.modules["rich"]


def _stopped_while_starting(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def main() -> None:
    """Console-script entry point (``agent = "agent.cli:main"``)."""
    # A SIGTERM while Python imports what a command needs (half a second for `agent start`)
    # ends it at once with 0, as one later in start-up does: nothing has been claimed yet. The
    # daemon (and the server) install their own handlers once they can act on it.
    signal.signal(signal.SIGTERM, _stopped_while_starting)
    _skip_unused_imports()
    from agent.cli.app import app
    from agent.cli.output import print_error, quiet_client_logs
    from agent.errors import FlowAgentError

    quiet_client_logs()
    try:
        app()
    except FlowAgentError as exc:  # raised outside a command, e.g. while building the app
        print_error(exc)
        sys.exit(1)


__all__ = ["main"]
