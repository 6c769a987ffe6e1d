"""OS-level helpers for a run's processes: learn when one exits, signal its whole tree.

Both are built to scale to a thousand concurrent runs in one event loop:

* :func:`watch_exit` uses a pidfd (Linux 5.3+) registered with the loop, so a waiting run costs
  one file descriptor and no thread. asyncio's own subprocess support needs a child watcher for
  that, which on Python 3.11 defaults to a thread per child and is global policy state; this
  needs neither. Elsewhere it falls back to one waiting thread per run.
* :func:`signal_tree` finds descendants through ``/proc/<pid>/task/<tid>/children`` (cost grows
  with the run's tree, not with every process on the machine), falling back to psutil's scan of
  all processes when the kernel does not offer those files.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

if TYPE_CHECKING:
    # Imported where used: the fence process (agent/fence.py) needs kill_tree only, and
    # asyncio would cost it 7 MiB.
    import asyncio


def watch_exit(proc: subprocess.Popen[bytes]) -> asyncio.Future[int]:
    """Resolve to ``proc``'s return code once it exits, reaping it (no zombie is left).

    Must be called from the event loop; nothing else may wait for ``proc``.
    """
    import asyncio

    loop = asyncio.get_running_loop()
    exited: asyncio.Future[int] = loop.create_future()
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        pass  # not Linux, or a kernel before 5.3
    else:
        try:
            loop.add_reader(pidfd, _reap, proc, pidfd, exited)
            return exited
        except NotImplementedError:  # a loop that cannot watch file descriptors
            os.close(pidfd)
    threading.Thread(
        target=_wait_in_thread, args=(proc, loop, exited), name=f"wait-{proc.pid}", daemon=True
    ).start()
    return exited


def watch_foreign_exit(pidfd: int) -> asyncio.Future[int | None]:
    """Resolve to None once the process behind ``pidfd`` exits; the future owns ``pidfd``.

    For a process that is not our child (adopted from an earlier life of the agent): its parent
    reaps it, so its exit status is not ours to learn here.
    """
    import asyncio

    loop = asyncio.get_running_loop()
    exited: asyncio.Future[int | None] = loop.create_future()

    def gone() -> None:
        loop.remove_reader(pidfd)
        os.close(pidfd)
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(pidfd, gone)
    return exited


def _reap(proc: subprocess.Popen[bytes], pidfd: int, exited: asyncio.Future[int]) -> None:
    import asyncio

    asyncio.get_running_loop().remove_reader(pidfd)
    os.close(pidfd)
    # A readable pidfd means the process has exited, so this collects it without blocking.
    code = proc.poll()
    if code is None:  # pragma: no cover - the kernel said it exited
        code = proc.wait()
    if not exited.done():
        exited.set_result(code)


def _wait_in_thread(
    proc: subprocess.Popen[bytes], loop: asyncio.AbstractEventLoop, exited: asyncio.Future[int]
) -> None:
    code = proc.wait()
    with contextlib.suppress(RuntimeError):  # the loop was closed meanwhile: nobody is waiting
        loop.call_soon_threadsafe(_settle, exited, code)


def _settle(exited: asyncio.Future[int], code: int) -> None:
    if not exited.done():
        exited.set_result(code)


def kill_tree(info: dict[str, Any]) -> bool:
    """SIGKILL the process tree of a run listed by ``info`` (``pid``, ``create_time``, ``pgid``);
    False if its process is gone or the pid now names another."""
    try:
        root = psutil.Process(int(info["pid"]))
        if abs(root.create_time() - float(info["create_time"])) > 0.01:
            return False  # the pid now names another process
    except (psutil.Error, KeyError, ValueError):
        return False
    signal_tree(root, int(info.get("pgid", info["pid"])), signal.SIGKILL)
    return True


def signal_tree(root: psutil.Process | None, pgid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to process group ``pgid`` and to every descendant of ``root`` outside it.

    ``root`` is None once the run's main process is gone; only its group can be reached then.
    The descendants are listed before anything is signalled, so a parent dying first does not
    hide its children. Processes already gone, or not ours to signal, are skipped silently.
    """
    descendants = _descendants(root) if root is not None else []
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
    for proc in descendants:
        # Group members already got it from killpg; a second SIGTERM would run their handler
        # twice. psutil checks the pid still names the process it listed (no pid-reuse accident).
        with contextlib.suppress(psutil.Error, ProcessLookupError, PermissionError):
            if os.getpgid(proc.pid) != pgid:
                proc.send_signal(sig)


def _descendants(root: psutil.Process) -> list[psutil.Process]:
    try:
        return _descendants_from_proc(root.pid)
    except OSError:
        with contextlib.suppress(psutil.Error):
            return root.children(recursive=True)
        return []


def _descendants_from_proc(pid: int) -> list[psutil.Process]:
    """Walk the tree through /proc/<pid>/task/<tid>/children (needs CONFIG_PROC_CHILDREN)."""
    if not Path(f"/proc/{pid}/task/{pid}/children").exists():
        raise FileNotFoundError("the kernel has no /proc/<pid>/task/<tid>/children")
    found: list[psutil.Process] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        for child in _children_of(parent):
            with contextlib.suppress(psutil.Error):
                # psutil.Process records the start time now: later signals cannot hit a new
                # process that reused the pid.
                found.append(psutil.Process(child))
                todo.append(child)
    return found


def _children_of(pid: int) -> list[int]:
    children: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return children  # gone meanwhile
    for task in tasks:  # a child belongs to the thread that forked it
        with contextlib.suppress(OSError):
            children.extend(int(p) for p in (task / "children").read_text().split())
    return children
