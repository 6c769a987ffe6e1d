"""A Prefect ``docker`` pool's job variables as options of the agent's Docker runner.

Prefect's Docker worker (``prefect-docker``, ``DockerWorkerJobConfiguration``) starts each run's
engine in a container of the pool's ``image``. The agent does the same on its ``docker``
runner; this maps the variables of the run's job configuration (merged as for any pool, see
:mod:`agent.backends.prefect_jobvars`) onto that runner's options:

    image                   image
    image_pull_policy       pull (Never: no; Always, IfNotPresent or unset: when not present)
    volumes                 volumes ("host:/container[:ro|rw]")
    networks                network_mode, the first (Docker attaches one network at creation)
    network_mode            network_mode; unset, with a loopback API URL: "host", as the
                            worker does on Linux so the engine reaches the server
    mem_limit               memory (no swap on top: going over it is an OOM kill → CRASHED)
    auto_remove             auto_remove
    env, command            the engine's environment and argv (command default:
                            ``python -m prefect.engine``, the image's python)

The container starts in a directory of the run's own (created in the container; nothing of
the host is mounted but ``volumes``), where pull steps fetch the flow's code.
Not mapped (logged once per run): ``privileged``, ``container_create_kwargs``,
``registry_credentials``, ``memswap_limit``, ``stream_output``, ``labels``, ``name``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import structlog

log = structlog.get_logger("agent.prefect")

#: The engine's command in a Prefect image when the pool names none.
ENGINE_COMMAND = ["python", "-m", "prefect.engine"]
_IGNORED = (
    "privileged",
    "container_create_kwargs",
    "registry_credentials",
    "memswap_limit",
)


def docker_options(values: Mapping[str, Any], api_url: str) -> dict[str, Any]:
    """The Docker runner's options for a run with these job variables (see the module)."""
    options: dict[str, Any] = {"mount_working_dir": False}
    if values.get("image"):
        options["image"] = str(values["image"])
    policy = str(values.get("image_pull_policy") or "").lower()
    options["pull"] = policy != "never"
    volumes = values.get("volumes")
    if isinstance(volumes, list) and volumes:
        options["volumes"] = [str(v) for v in volumes]
    networks = values.get("networks")
    network_mode = values.get("network_mode")
    if network_mode:
        options["network_mode"] = str(network_mode)
    elif isinstance(networks, list) and networks:
        options["network_mode"] = str(networks[0])
        if len(networks) > 1:
            log.warning("docker_networks_ignored", joined=networks[0], ignored=networks[1:])
    elif _loopback(api_url):
        options["network_mode"] = "host"
    if values.get("mem_limit") is not None:
        options["memory"] = str(values["mem_limit"]).lower()
    if values.get("auto_remove") is not None:
        options["auto_remove"] = bool(values["auto_remove"])
    ignored = [key for key in _IGNORED if values.get(key)]
    if ignored:
        log.warning("docker_job_variables_ignored", variables=ignored)
    return options


def _loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
