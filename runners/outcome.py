"""How a process-based run's end becomes a RunResult: shared by the subprocess and Docker runners.

The bootstrap's result file (``{"ok": true, "result": …}`` or ``{"ok": false, "error_type": …}``)
says what the flow did; the exit status says how the process ended; the last stderr lines give
a failure its context.
"""

from __future__ import annotations

import signal
from collections.abc import Iterable
from typing import Any

from runners.base import Outcome, RunResult


def completed(document: dict[str, Any] | None) -> RunResult:
    """Exit 0: the flow's return value when it was JSON, else its repr in the message."""
    if document and "result_repr" in document:
        message = f"completed; the result is not JSON-serialisable: {document['result_repr']}"
        return RunResult(Outcome.COMPLETED, message[:500], 0)
    return RunResult(Outcome.COMPLETED, "completed", 0, (document or {}).get("result"))


def failure_message(code: int, document: dict[str, Any] | None) -> str:
    """A non-zero exit: the flow's exception when the result file has it, else the code."""
    if not document or document.get("ok") is not False:
        return f"exited with code {code}"
    kind, text = str(document.get("error_type") or "Error"), str(document.get("error_message"))
    if kind == "EntrypointError":
        return text
    return f"{kind}: {text}" if text else kind


def ended(outcome: Outcome, headline: str, code: int, stderr_tail: Iterable[str]) -> RunResult:
    """A FAILED or CRASHED result, with the last stderr lines as context."""
    tail = list(stderr_tail)
    if tail and tail[-1] in (headline, f"flowagent: {headline}"):
        tail.pop()  # the traceback's last line says what the headline already says
    if tail:
        headline += "\nlast lines of stderr:\n" + "\n".join(tail)
    return RunResult(outcome, headline, code)


def signal_name(number: int) -> str:
    """``SIGKILL`` for 9; real-time signals have no name: ``signal 40``."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
