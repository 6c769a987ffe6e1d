"""Telling systemd how the agent is doing: the sd_notify(3) datagram protocol, spoken directly.

Under ``Type=notify`` systemd passes ``NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract
namespace) and, with ``WatchdogSec=``, ``WATCHDOG_USEC`` (and ``WATCHDOG_PID``). Each message is
one datagram of ``KEY=VALUE`` lines: ``READY=1``, ``STATUS=…``, ``WATCHDOG=1``, ``STOPPING=1``.
Outside systemd :class:`SystemdNotifier` does nothing, so the daemon calls it unconditionally.

The variables are taken out of the environment on the way in (as ``sd_notify``'s
``unset_environment`` does): flow runs inherit the agent's environment, and a flow must not be
able to speak for the agent.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import MutableMapping

import structlog

log = structlog.get_logger("agent.notify")

NOTIFY_SOCKET = "NOTIFY_SOCKET"
WATCHDOG_USEC = "WATCHDOG_USEC"
WATCHDOG_PID = "WATCHDOG_PID"


def _status_line(text: str) -> str:
    # One message is newline-separated assignments: a STATUS must stay on one line.
    return "STATUS=" + " ".join(text.split())


class SystemdNotifier:
    """Sends sd_notify messages to ``address``; every method is a no-op without one."""

    def __init__(self, address: str | None = None, watchdog_seconds: float | None = None) -> None:
        self.address = address
        self.watchdog_seconds = watchdog_seconds
        self._socket: socket.socket | None = None
        self._failed = False
        self._stopping_sent = False

    @classmethod
    def from_env(cls, env: MutableMapping[str, str]) -> SystemdNotifier:
        """Take the systemd variables out of ``env`` (normally ``os.environ``)."""
        address = env.pop(NOTIFY_SOCKET, None) or None
        usec = env.pop(WATCHDOG_USEC, None)
        pid = env.pop(WATCHDOG_PID, None)
        watchdog: float | None = None
        try:
            # WATCHDOG_PID names the process the watchdog is for: not us if it is another.
            if usec and (not pid or int(pid) == os.getpid()) and int(usec) > 0:
                watchdog = int(usec) / 1_000_000
        except ValueError:
            log.warning("watchdog_env_invalid", usec=usec, pid=pid)
        return cls(address, watchdog)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def _target(self) -> str | bytes:
        assert self.address is not None
        if self.address.startswith("@"):
            return b"\0" + self.address[1:].encode()
        return self.address

    def send(self, *lines: str) -> bool:
        """Send one message; True when it went out. Failures are logged once, never raised."""
        if self.address is None:
            return False
        try:
            if self._socket is None:
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                )
                # systemd reads promptly; if it does not, drop a message rather than block the loop.
                self._socket.setblocking(False)
            self._socket.sendto("\n".join(lines).encode(), self._target())
        except OSError as exc:
            if not self._failed:
                log.warning("sd_notify_failed", socket=self.address, error=str(exc))
                self._failed = True
            return False
        self._failed = False
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", _status_line(status))

    def status(self, status: str) -> bool:
        return self.send(_status_line(status))

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self, status: str = "stopping") -> bool:
        """``STOPPING=1``, once: the first signal and the final clean-up both call it."""
        if self._stopping_sent:
            return False
        self._stopping_sent = True
        return self.send("STOPPING=1", _status_line(status))

    def close(self) -> None:
        if self._socket is not None:
            with contextlib.suppress(OSError):
                self._socket.close()
            self._socket = None
