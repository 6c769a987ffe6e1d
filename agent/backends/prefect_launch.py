"""How the agent launches a Prefect run: Prefect's own engine, in the flows' interpreter.

The daemon launches what a :class:`~agent.models.Deployment` of ours describes, so each claimed
Prefect run comes with one made up for it: the command ``<python> -m prefect.engine`` (the
engine loads the flow, runs the deployment's pull steps, and reports RUNNING and the final
state itself), run by the subprocess runner (``python`` is the runner option), the working
directory of the deployment's ``set_working_directory`` pull step, and an environment with the
server's address and credentials under the run's job configuration
(:mod:`agent.backends.prefect_jobvars`: the pool's template defaults, or a 2.x agent's
infrastructure block, under the deployment's job variables, under the run's), whose
``command`` and ``working_dir`` also apply.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from collections.abc import Mapping
from typing import Any
from uuid import UUID

import structlog

from agent.backends.http import HttpClient
from agent.backends.prefect_docker import ENGINE_COMMAND, docker_options
from agent.backends.prefect_pools import Served, job_configuration
from agent.backends.prefect_wire import PDeployment, PRun, flow_run, working_directory
from agent.backends.prefect_workdirs import RunDirs
from agent.errors import ConfigError, NotFound
from agent.models import ClaimedRun, Deployment, utcnow

log = structlog.get_logger("agent.prefect")


class Launcher:
    """Builds the launch of each claimed run; ``python`` is the runner option of that name."""

    def __init__(
        self,
        http: HttpClient,
        *,
        api_url: str,
        api_key: str | None = None,
        auth_string: str | None = None,
        runner_options: Mapping[str, Any] | None = None,
        workdirs: RunDirs,
    ) -> None:
        self.http = http
        self.workdirs = workdirs
        self.python = str((runner_options or {}).get("python") or sys.executable)
        # What the engine in the child needs to reach the server as we do.
        self.api_url = api_url
        self.engine_env = {"PREFECT_API_URL": api_url}
        if api_key:
            self.engine_env["PREFECT_API_KEY"] = api_key
        if auth_string:
            self.engine_env["PREFECT_API_AUTH_STRING"] = auth_string

    def _engine_command(self, served: Served) -> list[str]:
        if served.runner == "docker":
            return list(ENGINE_COMMAND)  # the image's python, not ours
        return [self.python, "-m", "prefect.engine"]

    async def check_engine(self) -> None:
        """Fail at start-up, not on every run, when the engine's interpreter lacks prefect."""
        python = self.python
        hint = (
            "point the agent at a Python that has prefect and your flows' dependencies: "
            "agent start QUEUE --runner-option python=/path/to/venv/bin/python"
        )
        if os.sep not in python:
            found = shutil.which(python)
            if found is None:
                raise ConfigError(f"python interpreter {python!r} not found on PATH", hint=hint)
            python = found
        elif not os.path.isabs(python):
            return  # relative to each run's working directory: nothing to check here
        try:
            process = await asyncio.create_subprocess_exec(
                python,
                "-c",
                "import importlib.metadata as m; print(m.version('prefect'))",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
            )
        except OSError as exc:
            raise ConfigError(f"cannot run {python}: {exc.strerror or exc}", hint=hint) from None
        out, _ = await process.communicate()
        if process.returncode != 0:
            raise ConfigError(f"{python} has no prefect installed", hint=hint)
        log.info("prefect_engine", python=python, prefect_version=out.decode().strip())

    async def claimed_run(
        self, served: Served, run: PRun, deployments: dict[UUID, PDeployment | None]
    ) -> ClaimedRun:
        """The run and a deployment of ours that launches Prefect's engine for it, with the job
        configuration Prefect's consumer of the pool would use (pool template defaults <
        deployment < run; a 2.x agent's infrastructure block < its overrides < the run)."""
        assert run.deployment_id is not None
        if run.deployment_id not in deployments:
            try:
                response = await self.http.request("GET", f"deployments/{run.deployment_id}")
                deployments[run.deployment_id] = PDeployment.model_validate(response.json())
            except NotFound:
                deployments[run.deployment_id] = None  # the engine will say so, and crash
        found = deployments[run.deployment_id]
        prefect = found or PDeployment(id=run.deployment_id, name=str(run.deployment_id))
        job = await job_configuration(self.http, served, found, run)
        # None removes a lower source's variable; the agent's own environment stays.
        env = {k: v for k, v in job.env.items() if v is not None}
        queue_id = run.work_queue_id or served.queues[0].id
        now = utcnow()
        deployment = Deployment(
            id=prefect.id,
            name=prefect.name,
            work_queue_id=queue_id,
            # A command in the pool's template (or the 2.x block) replaces the engine's, as in
            # Prefect's consumers.
            command=job.command or self._engine_command(served),
            # Never the agent's own directory: the engine fetches the flow's code into it.
            working_dir=working_directory(prefect, run)
            or job.working_dir
            or str(self.workdirs.create(run.id)),
            tags=prefect.tags,
            # The daemon adds the agent's --runner-option defaults for subprocess runs; the
            # only one that matters here, python, is already in the command.
            runner=served.runner,
            runner_options=(
                docker_options(job.values, self.api_url) if served.runner == "docker" else {}
            ),
            env=self.engine_env | env,
            created=prefect.created or now,
            updated=prefect.updated or now,
        )
        return ClaimedRun(
            flow_run=flow_run(
                run,
                deployment_name=prefect.name,
                queue_id=queue_id,
                # Over the run's own env job variable: the merged one, as Prefect spells it.
                extra_env=env | {"PREFECT__FLOW_RUN_ID": str(run.id)},
            ),
            deployment=deployment,
        )
