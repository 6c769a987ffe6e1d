"""Inputs that must be refused, with a message that says why: a real server, the real CLI.

Runner options with no runner named, an interval schedule too short to be one, NUL bytes in
names and tags, a deployment file whose aliases expand without bound, and bodies, parameters
and env too large to hold or to run.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from agent.models import MAX_ENV_VALUE_BYTES, MAX_PARAMETERS_BYTES
from agent.server.body_limit import MAX_REQUEST_BYTES
from tests.support import Server, cli, make_deployment, make_queue, server_fixture

pytestmark = pytest.mark.integration


server = server_fixture("inputs")


def unique(prefix: str) -> str:
    return f"{prefix}-{time.monotonic_ns()}"


def test_runner_options_without_a_runner_are_checked_against_the_default(
    server: Server, api: httpx.Client, tmp_path: Path
) -> None:
    queue = make_queue(api)
    name = unique("d")
    create = ["deployment", "create", "--command", "true", "--queue", queue["name"]]
    refused = cli(server, *create, "--name", name, "--runner-option", "image=x", check=False)
    assert refused.returncode == 1, refused.stdout
    assert "runner 'subprocess'" in refused.stderr and "no --runner given" in refused.stderr
    assert "--runner docker" in refused.stderr
    assert api.get(f"deployments/name/{name}").status_code == 404
    # An option the default runner takes is fine; so is naming the runner the options are for.
    ok = cli(server, *create, "--name", name, "--runner-option", "python=python3")
    assert name in ok.stdout + ok.stderr
    unchecked = cli(
        server, *create, "--name", unique("d"), "--runner-option", "image=x", "--no-check"
    )
    assert unchecked.returncode == 0


def test_an_interval_shorter_than_ten_seconds_is_refused(server: Server, api: httpx.Client) -> None:
    queue = make_queue(api)
    body = {"name": unique("d"), "work_queue_id": queue["id"], "command": ["true"]}
    for interval in (0.001, 1, "9s"):
        response = api.post(
            "deployments", json=body | {"schedules": [{"interval_seconds": interval}]}
        )
        assert response.status_code == 422, response.text
        assert "at least 10 seconds" in response.text
    deployment = make_deployment(api, queue, command=["true"])
    response = api.post(
        f"deployments/{deployment['id']}/schedules", json={"interval_seconds": 0.001}
    )
    assert response.status_code == 422 and "at least 10 seconds" in response.text
    assert api.get(f"deployments/{deployment['id']}").json()["schedules"] == []

    added = cli(
        server, "deployment", "schedule", "add", deployment["name"], "--interval", "1", check=False
    )
    assert added.returncode == 1 and "at least 10 seconds" in added.stderr
    cli(server, "deployment", "schedule", "add", deployment["name"], "--interval", "10s")
    [schedule] = api.get(f"deployments/{deployment['id']}").json()["schedules"]
    assert schedule["interval_seconds"] == 10


def test_nul_bytes_in_names_and_tags_are_refused(api: httpx.Client) -> None:
    queue = make_queue(api)
    deployment = {"work_queue_id": queue["id"], "command": ["true"]}
    refused = [
        ("work_queues", {"name": "q\x00x"}),
        ("work_queues", {"name": unique("q"), "tags": ["a\x00b"]}),
        ("deployments", deployment | {"name": "d\x00x"}),
        ("deployments", deployment | {"name": unique("d"), "tags": ["a\x00b"]}),
        ("agents/heartbeat", {"name": "agent\x00x", "work_queue_id": queue["id"]}),
        ("agents/heartbeat", {"name": unique("a"), "work_queue_id": queue["id"], "tags": ["\x00"]}),
        ("notifications", {"name": "n\x00x", "on": ["FAILED"], "webhook_url": "http://x"}),
    ]
    for path, body in refused:
        response = api.post(path, json=body)
        assert response.status_code == 422, (path, body, response.text)
        assert "NUL byte" in response.text, response.text
    made = make_deployment(api, queue, command=["true"])
    response = api.post(f"deployments/{made['id']}/runs", json={"tags": ["x\x00"]})
    assert response.status_code == 422 and "NUL byte" in response.text


def test_an_alias_bomb_in_a_deployment_file_is_refused_at_once(
    server: Server, api: httpx.Client, tmp_path: Path
) -> None:
    queue = make_queue(api)
    # Nine levels of ten aliases: 10**9 strings once expanded, from a file of under 1 KiB.
    lines = ['  l0: &l0 ["lol"]']
    lines += [f"  l{n}: &l{n} [{', '.join([f'*l{n - 1}'] * 10)}]" for n in range(1, 10)]
    path = tmp_path / "bomb.yaml"
    path.write_text(
        f"name: bomb\nqueue: {queue['name']}\ncommand: ['true']\nparameters:\n"
        + "\n".join(lines)
        + "\n"
    )
    started = time.monotonic()
    result = cli(server, "deployment", "create", "--file", str(path), check=False)
    assert time.monotonic() - started < 30
    assert result.returncode == 1
    assert "aliases expand to more than 100,000 values" in result.stderr
    assert api.get("deployments/name/bomb").status_code == 404


def test_an_oversized_request_body_is_refused_before_it_is_read(
    server: Server, api: httpx.Client
) -> None:
    rss_before = psutil.Process(server.process.pid).memory_info().rss
    queue = make_queue(api)
    huge = {"name": unique("d"), "work_queue_id": queue["id"], "command": ["true"]}
    huge["parameters"] = {"blob": "x" * (MAX_REQUEST_BYTES + 1)}
    response = api.post("deployments", json=huge)
    assert response.status_code == 413, response.text[:200]
    assert "request body too large" in response.json()["detail"]

    # A chunked body declares no length: it is counted as it arrives and cut off at the limit.
    def chunks() -> Iterator[bytes]:
        yield b'{"name": "streamed", "parameters": {"blob": "'
        for _ in range(200):  # 200 MiB, far past the limit
            yield b"x" * (1024 * 1024)
        yield b'"}}'

    try:
        streamed = api.post("deployments", content=chunks())
    except httpx.TransportError:
        pass  # the server may close the connection while the client still writes; also refused
    else:
        assert streamed.status_code == 413, streamed.text[:200]
    assert api.get("deployments/name/streamed").status_code == 404
    assert api.get("health").status_code == 200
    # Neither body was held: the server grew by far less than what was sent.
    grown = psutil.Process(server.process.pid).memory_info().rss - rss_before
    assert grown < 64 * 1024 * 1024, f"server RSS grew by {grown:,} bytes"


def test_parameters_and_env_over_their_limits_get_a_clear_422(
    server: Server, api: httpx.Client
) -> None:
    queue = make_queue(api)
    body = {"name": unique("d"), "work_queue_id": queue["id"], "command": ["true"]}
    big = "x" * MAX_PARAMETERS_BYTES
    for fields, message in [
        ({"parameters": {"p": big}}, "pass large data by reference"),
        ({"env": {"BIG": "x" * MAX_ENV_VALUE_BYTES}}, "one variable may hold at most"),
        ({"env": {f"E{n}": "x" * 100_000 for n in range(11)}}, "env is"),
    ]:
        response = api.post("deployments", json=body | fields)
        assert response.status_code == 422, response.text[:200]
        assert message in response.json()["detail"], response.json()["detail"][:300]
    assert api.get(f"deployments/name/{body['name']}").status_code == 404

    deployment = make_deployment(api, queue, command=["true"])
    response = api.post(f"deployments/{deployment['id']}/runs", json={"parameters": {"p": big}})
    assert response.status_code == 422 and "parameters are" in response.json()["detail"]
    # Just under the limit is fine, and comes back whole.
    fits = "y" * (MAX_PARAMETERS_BYTES - 64)
    made = api.post(f"deployments/{deployment['id']}/runs", json={"parameters": {"p": fits}})
    assert made.status_code == 201, made.text[:200]
    assert api.get(f"flow_runs/{made.json()['id']}").json()["parameters"]["p"] == fits

    # The CLI says so before it sends anything.
    runs_before = api.get("flow_runs", params={"deployment_id": deployment["id"]}).json()
    refused = cli(
        server, "deployment", "run", deployment["name"], "--param", f"p={big}", check=False
    )
    assert refused.returncode != 0
    assert "pass large data by reference" in refused.stderr, refused.stderr[-500:]
    assert "Traceback" not in refused.stderr
    runs_after = api.get("flow_runs", params={"deployment_id": deployment["id"]}).json()
    assert len(runs_after) == len(runs_before)
