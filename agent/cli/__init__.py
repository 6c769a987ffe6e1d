"""The `agent` command line: the only place that reads flags and the environment."""

from __future__ import annotations

import sys


def main() -> None:
    """Console-script entry point (``agent = "agent.cli:main"``)."""
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
