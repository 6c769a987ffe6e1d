"""The Docker runner's options, against a real dockerd (and a few checks that need none)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from agent.errors import InputError, RunnerError
from runners.base import Outcome, RunResult, RunSpec
from runners.docker import DockerRunner
from runners.docker_config import mount_point
from runners.registry import validate_options
from tests.contract.dockerd import BASE_IMAGE, client, our_containers, require_dockerd

pytestmark = pytest.mark.integration

FLOWS = Path(__file__).parents[1] / "contract" / "flows"


@pytest.fixture
def dockerd() -> Iterator[None]:
    require_dockerd()
    before = our_containers()
    yield
    assert our_containers() == before, "containers left behind"


def run(options: dict[str, Any], **fields: Any) -> tuple[RunResult, list[tuple[str, str]], Any]:
    lines: list[tuple[str, str]] = []

    async def scenario() -> tuple[RunResult, Any]:
        spec = RunSpec(
            run_id=uuid4(),
            working_dir=FLOWS,
            options={"image": BASE_IMAGE, **options},
            **fields,
        )
        handle = await DockerRunner().start(spec, lambda s, line: lines.append((s, line)))
        result = await handle.wait()
        DockerRunner.discard_remains(handle.info)  # as the agent's fence does, once recorded
        return result, handle.info

    result, info = asyncio.run(asyncio.wait_for(scenario(), 60))
    return result, lines, info


def test_env_layers_and_the_agent_environment_stays_out(
    dockerd: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ONLY_THE_AGENT_HAS_THIS", "secret")
    # As the supervisor builds it: the agent's environment, then the deployment's and run's,
    # with the keys that came from the agent alone marked as inherited.
    agent_env = dict(os.environ)
    env = {**agent_env, "CONTRACT_VAR": "from the run", "LAYER": "run"}
    inherited = frozenset(agent_env) - {"CONTRACT_VAR", "LAYER"}
    command = ["sh", "-c", "echo $CONTRACT_VAR/$LAYER/$OPTION_ONLY/${ONLY_THE_AGENT_HAS_THIS:-unset}; echo $PATH"]  # fmt: skip

    result, lines, _ = run(
        {"env": {"LAYER": "option", "OPTION_ONLY": "option"}},
        command=command,
        env=env,
        inherited_env=inherited,
    )

    assert result.outcome is Outcome.COMPLETED, result
    assert lines[0] == ("stdout", "from the run/run/option/unset")
    assert lines[1] == ("stdout", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")


def test_another_user_still_reports_the_result(dockerd: None) -> None:
    result, _, _ = run({"user": "4242:4242"}, entrypoint="contract_flows.py:where")

    assert result.outcome is Outcome.COMPLETED, result
    assert result.result["cwd"] == str(FLOWS)  # the code mounted at its own path


def test_limits_network_and_keeping_the_container(dockerd: None) -> None:
    options = {"cpus": 0.5, "memory": "128m", "network_mode": "none", "auto_remove": False}
    result, _, info = run(options, command=["true"])
    docker_client = client()
    try:
        container = docker_client.containers.get(info["container_id"])
        host = container.attrs["HostConfig"]
        assert result.outcome is Outcome.COMPLETED
        assert (host["NanoCpus"], host["Memory"], host["NetworkMode"]) == (
            500_000_000,
            128 * 1024 * 1024,
            "none",
        )
        assert container.attrs["State"]["Status"] == "exited"
        container.remove()
    finally:
        docker_client.close()


def test_command_override_keeps_the_entrypoint_at_hand(dockerd: None, tmp_path: Path) -> None:
    (tmp_path / "data.txt").write_text("mounted\n")
    tmp_path.chmod(0o755)
    options = {
        "command": f"sh -c 'echo $FLOWAGENT_ENTRYPOINT; cat {tmp_path}/data.txt'",
        "volumes": [f"{tmp_path}:{tmp_path}:ro"],
    }

    result, lines, _ = run(options, entrypoint="contract_flows.py:add")

    assert result.outcome is Outcome.COMPLETED, result
    assert lines == [("stdout", "contract_flows.py:add"), ("stdout", "mounted")]


def test_options_are_checked_with_plain_messages() -> None:
    with pytest.raises(InputError, match="option 'image' is required"):
        validate_options("docker", {})
    with pytest.raises(InputError, match=r"unknown option 'imgae' \(did you mean 'image'\?\)"):
        validate_options("docker", {"image": "x", "imgae": "y"})
    with pytest.raises(InputError, match="host:/container/path"):
        validate_options("docker", {"image": "x", "volumes": ["relative"]})
    with pytest.raises(InputError, match=r'e\.g\. "256m"'):
        validate_options("docker", {"image": "x", "memory": "lots"})
    normalised = validate_options("docker", {"image": "x", "command": "sh -c 'echo hi'"})
    assert normalised["command"] == ["sh", "-c", "echo hi"]
    assert normalised["auto_remove"] is True


def test_the_code_never_hides_the_images_system_directories() -> None:
    assert mount_point(Path("/srv/flows")) == "/srv/flows"
    assert mount_point(Path("/")) == "/flow"
    assert mount_point(Path("/usr/local/flows")) == "/flow"
    assert mount_point(Path("/etc")) == "/flow"
    assert mount_point(Path("/usrdata")) == "/usrdata"


def test_without_the_sdk_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "docker", None)  # import docker now raises ImportError
    spec = RunSpec(run_id=uuid4(), working_dir=FLOWS, command=["true"], options={"image": "x"})

    with pytest.raises(RunnerError) as caught:
        asyncio.run(DockerRunner().start(spec, lambda s, line: None))

    assert caught.value.hint == "pip install 'flowagent[docker]'"


def test_an_unreachable_daemon_is_a_runner_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    spec = RunSpec(run_id=uuid4(), working_dir=FLOWS, command=["true"], options={"image": "x"})

    with pytest.raises(RunnerError, match="is dockerd running"):
        asyncio.run(DockerRunner().start(spec, lambda s, line: None))
