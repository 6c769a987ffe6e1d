"""A Prefect docker pool's job variables as the Docker runner's options (prefect_docker)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from structlog.testing import capture_logs

from agent.backends.prefect_docker import docker_options
from runners.docker_config import DockerOptions

LOOPBACK = "http://127.0.0.1:4200/api"


def test_the_variables_a_docker_pool_sets_map_onto_valid_runner_options() -> None:
    values = {
        "image": "etl:1",
        "image_pull_policy": "IfNotPresent",
        "volumes": ["/data:/data:ro"],
        "networks": ["etl-net", "other"],
        "mem_limit": "512M",
        "auto_remove": False,
        "stream_output": True,
    }
    with capture_logs() as logs:
        options = docker_options(values, "https://prefect.example.com/api")
    assert [(e["event"], e["ignored"]) for e in logs] == [("docker_networks_ignored", ["other"])]
    assert options == {
        "mount_working_dir": False,
        "image": "etl:1",
        "pull": True,
        "volumes": ["/data:/data:ro"],
        "network_mode": "etl-net",
        "memory": "512m",
        "auto_remove": False,
    }
    DockerOptions.model_validate(options)  # what the daemon checks before starting the run


def test_a_loopback_server_means_the_host_network_unless_the_pool_says_otherwise() -> None:
    assert docker_options({"image": "i"}, LOOPBACK)["network_mode"] == "host"
    assert docker_options({"image": "i"}, "http://localhost:4200/api")["network_mode"] == "host"
    assert docker_options({"image": "i", "network_mode": "bridge"}, LOOPBACK)["network_mode"] == (
        "bridge"
    )
    assert "network_mode" not in docker_options({"image": "i"}, "http://10.0.0.5:4200/api")


def test_never_pull_and_an_image_left_out_is_the_runners_to_refuse() -> None:
    options = docker_options({"image_pull_policy": "Never"}, LOOPBACK)
    assert options["pull"] is False
    assert "image" not in options
    with pytest.raises(ValidationError, match="image"):
        DockerOptions.model_validate(options)  # refused by the runner's own check
