"""A flow that leaves a daemon behind, the classic way: double fork, setsid, parent gone."""

import os
import time


def spawn_daemon(pidfile: str, seconds: float = 60) -> None:
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            with open(pidfile + ".tmp", "w") as f:
                f.write(str(os.getpid()))
            os.rename(pidfile + ".tmp", pidfile)
            os.execvp("sleep", ["sleep", "300"])
        os._exit(0)
    print("daemon spawned", flush=True)
    time.sleep(seconds)
