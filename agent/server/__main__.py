"""``python -m agent.server [--host H] [--port P]``: the server without the full CLI.

Settings come from the same place as the CLI's (``agent.config``): flags, ``AGENT_*``, the
config file under ``AGENT_HOME``.
"""

from __future__ import annotations

import argparse
import sys

from agent.config import Settings, load_settings
from agent.errors import FlowAgentError
from agent.logs import configure_logging
from agent.server.main import serve
from agent.server.settings import from_settings


def _settings(argv: list[str] | None) -> Settings:
    parser = argparse.ArgumentParser(
        prog="python -m agent.server", description="Run the flowagent embedded server."
    )
    parser.add_argument("--host", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", help="TCP port (default 4200)")
    parser.add_argument("--database-url", help="PostgreSQL URL (default: SQLite in AGENT_HOME)")
    args = parser.parse_args(argv)
    flags = {"server_host": args.host, "server_port": args.port, "database_url": args.database_url}
    return load_settings(flags)


def main(argv: list[str] | None = None) -> int:
    try:
        settings = _settings(argv)
        configure_logging(settings.log_level, settings.log_format, route_stdlib=True)
        serve(from_settings(settings))
    except FlowAgentError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
