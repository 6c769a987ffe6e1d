"""Health and metrics for real: the agent's /healthz and /metrics and the server's /metrics,
scraped over HTTP and parsed with prometheus-client's own parser; resource thresholds that stop
a real agent from claiming."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import (
    Server,
    block_loop_on_sigusr1,
    free_port,
    running_server,
    server_fixture,
    start_agent,
    stop,
    wait_for,
)

pytestmark = pytest.mark.integration

FLOWS = Path(__file__).parent / "flows"


server = server_fixture("health")


@pytest.fixture
def agents() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        stop(process)


def post(api: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = api.post(path, json=body)
    assert response.status_code in (200, 201), response.text
    return dict(response.json())


def queue_with(api: httpx.Client, **deployment: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    queue = post(api, "work_queues", {"name": f"q-{uuid.uuid4().hex[:10]}"})
    body = {"name": f"d-{uuid.uuid4().hex[:10]}", "work_queue_id": queue["id"], **deployment}
    return queue, post(api, "deployments", body)


def scrape(url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Every sample of a Prometheus text page: {sample name: {sorted labels: value}}."""
    response = httpx.get(url, timeout=5)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[labels] = sample.value
    return samples


def healthz(port: int) -> tuple[int, dict[str, Any]]:
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
    except httpx.HTTPError:
        return 0, {}
    return response.status_code, dict(response.json())


def run_state(api: httpx.Client, run_id: str) -> str:
    return str(api.get(f"flow_runs/{run_id}").json()["state"]["type"])


def test_agent_serves_healthz_and_metrics(server: Server, api: httpx.Client, agents) -> None:
    queue, deployment = queue_with(
        api, entrypoint="sample.py:add", parameters={"a": 1, "b": 2}, working_dir=str(FLOWS)
    )
    port = free_port()
    agents.append(start_agent(server, queue["id"], "--health-port", str(port)))

    wait_for(lambda: healthz(port)[0] == 200, timeout=20, what="/healthz to answer 200")
    assert healthz(port) == (200, {"status": "ok"})
    runs = [post(api, f"deployments/{deployment['id']}/runs", {})["id"] for _ in range(2)]
    wait_for(lambda: all(run_state(api, r) == "COMPLETED" for r in runs), what="both runs")

    url = f"http://127.0.0.1:{port}/metrics"
    wait_for(
        lambda: scrape(url)["flowagent_agent_runs_in_flight"][()] == 0, what="no runs in flight"
    )
    metrics = scrape(url)
    subprocess_runner = (("runner", "subprocess"),)
    assert metrics["flowagent_agent_runs_claimed_total"][(("queue", queue["name"]),)] == 2
    assert metrics["flowagent_agent_runs_started_total"][subprocess_runner] == 2
    finished = metrics["flowagent_agent_runs_finished_total"]
    assert finished[(("runner", "subprocess"), ("state", "COMPLETED"))] == 2
    assert metrics["flowagent_agent_claim_to_start_seconds_count"][subprocess_runner] == 2
    assert metrics["flowagent_agent_claim_to_start_seconds_sum"][subprocess_runner] > 0
    assert metrics["flowagent_agent_heartbeat_failures_total"][()] == 0
    assert metrics["flowagent_agent_reports_spooled"][()] == 0
    assert metrics["flowagent_agent_claiming_paused"][()] == 0
    assert 0 <= metrics["flowagent_agent_host_cpu_percent"][()] <= 100
    assert 0 < metrics["flowagent_agent_host_memory_percent"][()] <= 100
    assert metrics["flowagent_agent_host_memory_available_bytes"][()] > 0
    assert httpx.get(f"http://127.0.0.1:{port}/nope", timeout=5).status_code == 404


def test_healthz_is_503_when_the_loop_is_blocked(server: Server, api: httpx.Client, agents):
    queue, _ = queue_with(api, command=["true"])
    port = free_port()
    agent = start_agent(
        server,
        queue["id"],
        "--health-port",
        str(port),
        **block_loop_on_sigusr1(8),
    )
    agents.append(agent)
    wait_for(lambda: healthz(port)[0] == 200, timeout=20, what="/healthz to answer 200")

    agent.send_signal(signal.SIGUSR1)

    # The answer comes from the server's own thread, so it can say what is wrong.
    _, body = wait_for(
        lambda: (answer := healthz(port))[0] == 503 and answer, timeout=10, what="a 503"
    )
    assert body["status"] == "unhealthy"
    assert body["reason"].startswith("event loop unresponsive for")
    wait_for(lambda: healthz(port)[0] == 200, timeout=15, what="/healthz to recover")


def test_healthz_is_503_once_the_api_is_out_of_reach(tmp_path: Path) -> None:
    with running_server(tmp_path / "srv") as own_server, own_server.client() as own_api:
        queue, _ = queue_with(own_api, command=["true"])
        port = free_port()
        agent = start_agent(
            own_server,
            queue["id"],
            "--health-port",
            str(port),
            AGENT_HEARTBEAT_SECONDS="0.3",
            AGENT_REQUEST_TIMEOUT_SECONDS="1",
            # A heartbeat is retried this long before it counts as failed.
            AGENT_STARTUP_TIMEOUT_SECONDS="1",
        )
        try:
            wait_for(lambda: healthz(port)[0] == 200, timeout=20, what="/healthz to answer 200")
            stop(own_server.process)

            _, body = wait_for(
                lambda: (answer := healthz(port))[0] == 503 and answer, timeout=20, what="a 503"
            )
            assert body["reason"].startswith("API not reached for")
            wait_for(
                lambda: (
                    scrape(f"http://127.0.0.1:{port}/metrics")[
                        "flowagent_agent_heartbeat_failures_total"
                    ][()]
                    >= 1
                ),
                timeout=20,
                what="a heartbeat failure counted",
            )
        finally:
            stop(agent)


def test_server_metrics(server: Server, api: httpx.Client, agents) -> None:
    queue, deployment = queue_with(api, command=["true"])
    agents.append(start_agent(server, queue["id"], AGENT_HEARTBEAT_SECONDS="0.5"))
    run = post(api, f"deployments/{deployment['id']}/runs", {})
    wait_for(lambda: run_state(api, run["id"]) == "COMPLETED", what="the run")

    metrics = scrape(server.url.removesuffix("/api") + "/metrics")

    assert metrics["flowagent_server_flow_runs"][(("state", "COMPLETED"),)] >= 1
    assert (("state", "SCHEDULED"),) in metrics["flowagent_server_flow_runs"]
    assert metrics["flowagent_server_agents"][(("status", "ONLINE"),)] >= 1
    requests = metrics["flowagent_server_requests_total"]
    run_reads = (
        ("method", "GET"),
        ("route", "/api/flow_runs/{run_id}"),
        ("status", "200"),
    )
    assert requests[run_reads] >= 1, sorted(requests)
    assert not any("/api/flow_runs/" + run["id"] in dict(k)["route"] for k in requests)


def test_server_metrics_need_the_api_key_when_there_is_one(tmp_path: Path) -> None:
    with running_server(tmp_path / "srv", {"AGENT_API_KEY": "k3y-for-metrics"}) as secured:
        url = secured.url.removesuffix("/api") + "/metrics"
        assert httpx.get(url, timeout=5).status_code == 401
        ok = httpx.get(url, headers={"Authorization": "Bearer k3y-for-metrics"}, timeout=5)
        assert ok.status_code == 200
        assert "flowagent_server_flow_runs" in ok.text


def test_agent_stops_claiming_while_beyond_a_threshold(
    server: Server, api: httpx.Client, agents, tmp_path: Path
) -> None:
    queue, deployment = queue_with(api, command=["true"])
    port = free_port()
    log_path = tmp_path / "agent.log"
    agents.append(
        start_agent(
            server,
            queue["id"],
            "--health-port",
            str(port),
            "--min-free-memory",
            "1000T",  # no host has that much free: claiming stays paused
            log_path=log_path,
        )
    )
    wait_for(lambda: healthz(port)[0] == 200, timeout=20, what="/healthz to answer 200")
    run = post(api, f"deployments/{deployment['id']}/runs", {})

    time.sleep(5)  # a few rechecks (every 2s) of the threshold

    assert run_state(api, run["id"]) == "SCHEDULED"
    assert scrape(f"http://127.0.0.1:{port}/metrics")["flowagent_agent_claiming_paused"][()] == 1
    events = [json.loads(line) for line in log_path.read_text().splitlines() if line]
    paused = [e for e in events if e["event"] == "claiming_paused"]
    assert len(paused) == 1, "the reason is logged once, not at every poll"
    assert paused[0]["reason"].startswith("free memory")
    assert "< 1000.0T" in paused[0]["reason"]
