"""What a Docker run's container is made of: the runner's options and the container's config.

Pure data, no docker SDK: :mod:`runners.docker` hands the config to ``containers.create()``.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from runners.base import RunSpec

BOOTSTRAP = Path(__file__).resolve().with_name("bootstrap.py")
IN_CONTAINER_BOOTSTRAP = "/flowagent/bootstrap.py"
IN_CONTAINER_RESULT = "/flowagent/result.json"
RUN_LABEL = "flowagent.run-id"
#: The name of each run's files directory (its result file) starts so: only those are removed.
FILES_PREFIX = "flowagent-docker-"
#: Mounting the code at these (or under them) would hide the image's own files.
SYSTEM_DIRS = ("/bin", "/boot", "/dev", "/etc", "/flowagent", "/lib", "/lib32", "/lib64",
               "/proc", "/run", "/sbin", "/sys", "/usr", "/var")  # fmt: skip
_VOLUME = re.compile(r"^[^:]+:/[^:]*(:(ro|rw))?$")
_MEMORY = re.compile(r"^[0-9]+[bkmg]?$", re.IGNORECASE)


class DockerOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    image: str = Field(min_length=1)
    """Image to run in; it needs Python (option python) for entrypoint deployments."""
    command: list[str] | None = None
    """argv to run instead of the deployment's command or of the bootstrap."""
    env: dict[str, str] = Field(default_factory=dict)
    """Container env; the deployment's and the run's env win over it."""
    volumes: list[str] = Field(default_factory=list)
    """Extra bind mounts, "host:/container/path[:ro|rw]"."""
    network_mode: str | None = None
    """bridge, host, none, or a network's name (Docker's default: bridge)."""
    cpus: float | None = Field(default=None, gt=0)
    """CPU limit, e.g. 1.5."""
    memory: str | None = None
    """Memory limit, e.g. "256m"; no swap on top, so going over it is an OOM kill."""
    user: str | None = None
    """User to run as, "uid[:gid]" or a name known to the image."""
    auto_remove: bool = True
    """Remove the container once its logs and exit status are collected."""
    python: str = "python3"
    """Python interpreter inside the image, for entrypoint deployments."""
    mount_working_dir: bool = True
    """Bind-mount the working directory read-only; false if the image has the code there."""
    pull: bool = False
    """Pull the image when it is not present locally (never, by default)."""

    @field_validator("command", mode="before")
    @classmethod
    def _split_command(cls, value: Any) -> Any:
        return shlex.split(value) if isinstance(value, str) else value

    @field_validator("memory", mode="before")
    @classmethod
    def _check_memory(cls, value: Any) -> Any:
        value = str(value) if isinstance(value, int) else value
        if isinstance(value, str) and not _MEMORY.match(value):
            raise ValueError('expected bytes or a number with b, k, m or g, e.g. "256m"')
        return value

    @field_validator("volumes")
    @classmethod
    def _check_volumes(cls, value: list[str]) -> list[str]:
        for volume in value:
            if not _VOLUME.match(volume):
                raise ValueError(f'{volume!r} is not "host:/container/path[:ro|rw]"')
        return value


def container_config(
    spec: RunSpec, options: DockerOptions, parameters: str, result_file: Path
) -> dict[str, Any]:
    workdir = str(spec.working_dir)
    # Mount objects, not "host:container" strings: a path may hold a colon.
    mounts = [
        _bind(BOOTSTRAP, IN_CONTAINER_BOOTSTRAP),
        _bind(result_file, IN_CONTAINER_RESULT, False),
    ]
    if options.mount_working_dir:
        workdir = mount_point(spec.working_dir.resolve())
        mounts.append(_bind(spec.working_dir.resolve(), workdir))
    # What the agent's own environment put in spec.env stays out: it describes the agent's host.
    env = options.env | {k: v for k, v in spec.env.items() if k not in spec.inherited_env}
    env.setdefault("PYTHONUNBUFFERED", "1")
    env["FLOWAGENT_PARAMETERS"] = parameters
    env["FLOWAGENT_RESULT_FILE"] = IN_CONTAINER_RESULT
    if spec.entrypoint is not None:
        env["FLOWAGENT_ENTRYPOINT"] = spec.entrypoint
        argv = [options.python, IN_CONTAINER_BOOTSTRAP, spec.entrypoint]
    else:
        argv = list(spec.command or [])
    config: dict[str, Any] = {
        "image": options.image,
        "command": options.command or argv,
        "name": f"flowagent-{spec.run_id.hex[:12]}-{secrets.token_hex(3)}",
        "labels": {RUN_LABEL: str(spec.run_id), **spec.labels},
        "environment": env,
        "working_dir": workdir,
        "mounts": mounts,
        "volumes": options.volumes or None,
        "init": True,  # docker-init as PID 1: forwards SIGTERM, reaps the flow's orphans
        "network_mode": options.network_mode,
        "user": options.user,
    }
    if options.cpus is not None:
        config["nano_cpus"] = int(options.cpus * 1e9)
    if options.memory is not None:
        # The same limit for memory+swap: out of memory means OOM-killed, not swapping slowly.
        config["mem_limit"] = config["memswap_limit"] = options.memory
    return {k: v for k, v in config.items() if v is not None}


def files_dir(attrs: dict[str, Any]) -> Path | None:
    """A run's files directory, from its container's inspect data: its result file's mount."""
    for mount in attrs.get("Mounts") or []:
        if mount.get("Destination") == IN_CONTAINER_RESULT and mount.get("Source"):
            return our_files(str(Path(mount["Source"]).parent))
    return None


def our_files(path: Any) -> Path | None:
    """``path`` if it names a run's files directory (so it is safe to remove), else None."""
    if not isinstance(path, str) or not os.path.isabs(path):
        return None
    files = Path(path)
    return files if files.name.startswith(FILES_PREFIX) else None


def _bind(source: Path, target: str, read_only: bool = True) -> dict[str, Any]:
    # What docker.types.Mount holds (a dict); built here so the SDK is needed only to run.
    return {"Type": "bind", "Source": str(source), "Target": target, "ReadOnly": read_only}


def mount_point(path: Path) -> str:
    text = str(PurePosixPath(path))
    hides_system = text == "/" or any(text == d or text.startswith(d + "/") for d in SYSTEM_DIRS)
    return "/flow" if hides_system else text


def outside_entrypoint(entrypoint: str | None, working_dir: Path) -> str | None:
    """Why a ``/abs/file.py:func`` entrypoint cannot run in a container that sees only its
    mounted working directory, or None when it can."""
    if entrypoint is None:
        return None
    target = entrypoint.rpartition(":")[0]
    if not target.startswith("/") or not target.endswith(".py"):
        return None
    if PurePosixPath(target).is_relative_to(PurePosixPath(working_dir)):
        return None
    return (
        f"entrypoint file {target} is outside the working directory {working_dir}, the only "
        "part of this host a Docker run sees: give the entrypoint relative to the working "
        "directory (or put the file in it)"
    )
