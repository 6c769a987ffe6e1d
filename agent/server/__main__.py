"""``python -m agent.server [--host H] [--port P]``: the server without the full CLI.

Reads ``AGENT_HOME`` (default ``~/.agent``) and ``AGENT_API_KEY`` from the environment.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from agent.errors import ConfigError, FlowAgentError
from agent.server.main import serve
from agent.server.settings import ServerSettings


def _settings(argv: list[str] | None) -> ServerSettings:
    parser = argparse.ArgumentParser(
        prog="python -m agent.server", description="Run the flowagent embedded server."
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    parser.add_argument("--port", type=int, default=4200, help="TCP port (default 4200)")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port} is not a TCP port", hint="use 1-65535")
    home = Path(os.environ.get("AGENT_HOME") or "~/.agent").expanduser()
    return ServerSettings(
        home=home,
        host=args.host,
        port=args.port,
        # An empty AGENT_API_KEY= line in an env file means "no key", not "the empty key".
        api_key=os.environ.get("AGENT_API_KEY") or None,
    )


def main(argv: list[str] | None = None) -> int:
    try:
        serve(_settings(argv))
    except FlowAgentError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
