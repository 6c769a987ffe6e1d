"""Printing (rich tables, JSON, errors) and the bridge from sync commands to the async client."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import structlog
import typer

from agent.backends.http import HttpClient
from agent.backends.native import NativeBackend
from agent.config import Settings, settings_redactor
from agent.errors import ConfigError, FlowAgentError, InputError, ServerUnavailable
from agent.models import FlowRun, StateType, utcnow
from agent.redaction import mask_env_fields

if TYPE_CHECKING:
    # rich is imported when something is printed, not with the CLI: the daemon (`agent start`)
    # prints nothing with it, and its import costs a long-running agent ~5 MiB of RSS.
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

T = TypeVar("T")

# One-shot commands give up on an unreachable server quickly; the daemon waits much longer.
CLI_RETRY_SECONDS = 1.5
UNREACHABLE_HINT = "start it with agent server start, or set --api-url / AGENT_API_URL"

STATE_STYLES = {
    StateType.SCHEDULED: "cyan",
    StateType.PENDING: "cyan",
    StateType.RUNNING: "blue",
    StateType.COMPLETED: "green",
    StateType.FAILED: "red",
    StateType.CRASHED: "bold red",
    StateType.CANCELLING: "yellow",
    StateType.CANCELLED: "yellow",
}


# --------------------------------------------------------------------------- consoles


def _width(stream: Any) -> int | None:
    # Piped output is for scripts and logs: never wrap (or fold a UUID) at 80 columns.
    if stream.isatty():
        return None
    return int(os.environ.get("COLUMNS") or 0) or 240


def out() -> Console:
    from rich.console import Console

    return Console(highlight=False, width=_width(sys.stdout))


def err() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False, width=_width(sys.stderr))


def text(content: str = "", style: str = "") -> Text:
    """A styled piece of text (rich's ``Text``, imported on first use)."""
    from rich.text import Text

    return Text(content, style=style)


def info(message: str) -> None:
    """A human note on stderr, so stdout stays the value a script wants."""
    err().print(text(message, style="dim"), soft_wrap=True)


def say(message: str | Text) -> None:
    out().print(message, soft_wrap=True)


def print_error(exc: FlowAgentError) -> None:
    console = err()
    console.print(
        text("error: ", style="bold red") + text(exc.message, style="red"), soft_wrap=True
    )
    if exc.hint:
        console.print(text("hint: ", style="yellow") + text(exc.hint), soft_wrap=True)


def warn(message: str) -> None:
    err().print(text("warning: ", style="bold yellow") + text(message), soft_wrap=True)


def print_json(data: Any) -> None:
    body = json.dumps(data, indent=2, default=str)
    if sys.stdout.isatty():
        out().print_json(body)
    else:
        typer.echo(body)


def print_documents(settings: Settings, data: Any) -> None:
    """print_json for what the API holds about deployments and runs, secrets masked.

    Their ``env`` is shown with the value of every secret-looking name masked, and this
    process's own secrets (the API key, a URL's password…) are masked wherever they appear:
    the same for every command, so no listing shows what ``inspect`` hides.
    """
    shown = mask_env_fields(data, settings.secret_patterns)
    print_json(settings_redactor(settings, os.environ).redact_value(shown))


def table(*columns: str, title: str | None = None) -> Table:
    from rich.table import Table

    result = Table(title=title, header_style="bold", box=None, pad_edge=False)
    for column in columns:
        result.add_column(column, no_wrap=column in ("id", "name", "expected start"))
    return result


def print_table(data: Table, empty: str) -> None:
    if data.row_count == 0:
        info(empty)
        return
    out().print(data)


def state_text(state: StateType) -> Text:
    return text(state.value, style=STATE_STYLES.get(state, ""))


def when(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def age(moment: datetime, now: datetime | None = None) -> str:
    """``12s ago`` / ``in 3m`` / ``2h ago``."""
    delta = ((now or utcnow()) - moment).total_seconds()
    seconds = abs(delta)
    if seconds < 120:
        amount = f"{seconds:.0f}s"
    elif seconds < 2 * 3600:
        amount = f"{seconds / 60:.0f}m"
    elif seconds < 2 * 86400:
        amount = f"{seconds / 3600:.0f}h"
    else:
        amount = f"{seconds / 86400:.0f}d"
    return f"{amount} ago" if delta >= 0 else f"in {amount}"


def confirm(question: str, yes: bool) -> None:
    """Go on only when the user said --yes or answers y; never guess without a terminal."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise InputError(f"{question} Refusing to ask without a terminal.", hint="pass --yes")
    typer.confirm(question, abort=True)


# --------------------------------------------------------------------------- the async bridge


def quiet_client_logs() -> None:
    """Keep the HTTP client's retry warnings out of one-shot command output.

    The CLI owns the process, so it may configure structlog; `agent start` reconfigures
    logging for the daemon.
    """
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )


def backend_for(settings: Settings, retry_for: float = CLI_RETRY_SECONDS) -> NativeBackend:
    if settings.backend == "prefect":
        raise ConfigError(
            "this command manages the embedded server, but backend is 'prefect'",
            hint="manage Prefect work queues with the prefect CLI; `agent start` can poll them",
        )
    http = HttpClient(
        settings.api_urls,
        api_key=settings.api_key,
        timeout=settings.request_timeout_seconds,
        retry_for=min(retry_for, settings.startup_timeout_seconds),
    )
    return NativeBackend(http)


def call(
    settings: Settings,
    fn: Callable[[NativeBackend], Awaitable[T]],
    retry_for: float = CLI_RETRY_SECONDS,
) -> T:
    """Run ``fn(backend)`` on a fresh event loop and close the client after it.

    ``retry_for`` bounds how long an unreachable or busy server is retried (never longer than
    the ``startup_timeout_seconds`` setting).
    """

    async def run() -> T:
        backend = backend_for(settings, retry_for)
        try:
            return await fn(backend)
        except ServerUnavailable as exc:
            if exc.hint is None and exc.message.startswith("cannot reach"):
                exc.hint = UNREACHABLE_HINT
            raise
        finally:
            await backend.aclose()

    return asyncio.run(run())


def run_state(run: FlowRun) -> Text:
    """The state, with its name when that says more: ``SCHEDULED (Late)``,
    ``SCHEDULED (AwaitingRetry)``, ``CANCELLED (Skipped)``."""
    shown = state_text(run.state.type)
    if run.state.name.lower() != run.state.type.value.lower():
        style = "bold yellow" if run.state.name == "Late" else "dim"
        shown += text(f" ({run.state.name})", style=style)
    return shown
