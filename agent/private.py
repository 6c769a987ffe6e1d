"""Files only their owner may read: the agent home, the database and ``config.toml``.

The database holds deployments' and runs' env (secrets among them) and ``config.toml`` may hold
``api_key``; with the usual umask (022) both would be created world-readable in a home anyone on
the host can list. A home we create is 0700 and these files 0600, whatever the umask.

An existing home is left as it is: ``AGENT_HOME`` may point at a directory the user shares with
other things (chmodding ``/srv`` or ``/tmp`` would break them); the docs say to ``chmod 700``
an older one. The database and ``config.toml`` are ours alone, so an existing one that others
can read is tightened to 0600, with a warning.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600

logger = logging.getLogger(__name__)


def private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) if needed; the directory itself private (0700).

    Parents are created with the usual mode: only the home holds anything secret.
    """
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    return path


def private_file(path: Path, *, create: bool = True) -> None:
    """Create ``path`` empty and 0600 if it is missing (unless ``create`` is false); tighten an
    existing one that group or others can read to 0600."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        if create:
            # O_EXCL: a file someone created meanwhile keeps its content (and is tightened
            # at the next start).
            with contextlib.suppress(FileExistsError):
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE))
        return
    if stat.S_ISREG(mode) and stat.S_IMODE(mode) & 0o077:
        os.chmod(path, PRIVATE_FILE)
        logger.warning(
            "%s could be read by other users (mode %o); it holds secrets, so it is now 0600",
            path,
            stat.S_IMODE(mode),
        )


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically; the new file is 0600 whatever the umask."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    # A leftover of a crash would keep its own mode through O_CREAT.
    tmp.unlink(missing_ok=True)
    descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    with os.fdopen(descriptor, "w") as file:
        file.write(text)
    tmp.replace(path)  # atomic: a crash mid-write never leaves half a file
