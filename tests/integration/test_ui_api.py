"""What the web UI needs of the server, over real HTTP: the run list's keyset paging and
filters, the overview, the live log stream, and the UI's files with a strict CSP."""

from __future__ import annotations

import json
import subprocess
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import (
    Server,
    make_deployment,
    make_queue,
    make_run,
    running_server,
    server_fixture,
    start_agent,
    stop,
    wait_for,
)

pytestmark = pytest.mark.integration


server = server_fixture("ui-api", each_database=True)


def ids(runs: list[dict[str, Any]]) -> list[str]:
    return [run["id"] for run in runs]


def test_keyset_pages_cover_every_run_once_newest_first(api: httpx.Client) -> None:
    deployment = make_deployment(api, make_queue(api), command=["true"])
    made = [make_run(api, deployment)["id"] for _ in range(7)]
    everything = api.get("flow_runs", params={"deployment_id": deployment["id"]}).json()
    assert ids(everything) == made[::-1]

    pages: list[list[str]] = []
    before: str | None = None
    while True:
        params: dict[str, Any] = {"deployment_id": deployment["id"], "limit": 3}
        if before:
            params["before"] = before
        page = ids(api.get("flow_runs", params=params).json())
        if not page:
            break
        pages.append(page)
        before = page[-1]
    assert [len(page) for page in pages] == [3, 3, 1]
    assert [run for page in pages for run in page] == made[::-1]
    unknown = api.get("flow_runs", params={"before": "00000000-0000-0000-0000-000000000000"})
    assert unknown.status_code == 404


def test_filters_by_tag_state_and_time(api: httpx.Client) -> None:
    deployment = make_deployment(api, make_queue(api), command=["true"])
    plain = make_run(api, deployment, tags=["a_b"])
    like = make_run(api, deployment, tags=["axb", "100%"])
    both = make_run(api, deployment, tags=["a_b", "x"])
    mine = {"deployment_id": deployment["id"]}

    def listed(**params: Any) -> set[str]:
        response = api.get("flow_runs", params=mine | params)
        assert response.status_code == 200, response.text
        return set(ids(response.json()))

    # "_" and "%" are LIKE wildcards: they must match only themselves.
    assert listed(tag="a_b") == {plain["id"], both["id"]}
    assert listed(tag=["a_b", "x"]) == {both["id"]}
    assert listed(tag="100%") == {like["id"]}
    assert listed(tag="a") == set()  # a whole tag, not a substring of one
    api.post(f"flow_runs/{plain['id']}/cancel")
    assert listed(state="CANCELLED") == {plain["id"]}
    assert listed(created_after=both["created"]) == {both["id"]}
    assert listed(created_before=like["created"]) == {plain["id"]}


def test_overview_counts_runs_by_state_and_queue_backlog(api: httpx.Client) -> None:
    queue = make_queue(api)
    deployment = make_deployment(api, queue, command=["true"])
    runs = [make_run(api, deployment) for _ in range(3)]
    api.post(f"flow_runs/{runs[0]['id']}/cancel")
    before = api.get("overview", params={"hours": 1, "buckets": 6}).json()
    assert len(before["buckets"]) == 6 and before["bucket_seconds"] == pytest.approx(600)
    summed = {
        state: sum(bucket["counts"][state] for bucket in before["buckets"])
        for state in before["totals"]
    }
    assert summed == before["totals"]
    backlog = next(q for q in before["queues"] if q["id"] == queue["id"])
    assert (backlog["scheduled"], backlog["active"], backlog["paused"]) == (2, 0, False)

    make_run(api, deployment)
    after = api.get("overview", params={"hours": 1}).json()
    assert after["totals"]["SCHEDULED"] == before["totals"]["SCHEDULED"] + 1
    assert next(q for q in after["queues"] if q["id"] == queue["id"])["scheduled"] == 3
    assert api.get("overview", params={"hours": 0}).status_code == 422


def test_overview_puts_each_run_in_the_bucket_of_its_time(api: httpx.Client) -> None:
    deployment = make_deployment(api, make_queue(api), command=["true"])
    params = {"hours": 1, "buckets": 6}  # 10-minute buckets, the oldest first
    before = api.get("overview", params=params).json()["buckets"]
    now = datetime.now(UTC)
    for minutes_ago in (55, 33, 2, 2):
        make_run(
            api, deployment, expected_start_time=(now - timedelta(minutes=minutes_ago)).isoformat()
        )
    make_run(api, deployment, expected_start_time=(now - timedelta(hours=3)).isoformat())  # out
    after = api.get("overview", params=params).json()["buckets"]
    added = [
        a["counts"]["SCHEDULED"] - b["counts"]["SCHEDULED"]
        for a, b in zip(after, before, strict=True)
    ]
    assert added == [1, 0, 1, 0, 0, 2]
    one = api.get("overview", params={"hours": 1, "buckets": 1})
    assert one.status_code == 200, one.text
    assert one.json()["buckets"][0]["counts"] == one.json()["totals"]


def read_events(response: httpx.Response, into: list[tuple[str, Any]]) -> None:
    name = "message"
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            into.append((name, json.loads(line.removeprefix("data: "))))


def test_log_stream_pushes_lines_while_the_run_goes_on(
    server: Server, api: httpx.Client, tmp_path: Path
) -> None:
    queue = make_queue(api)
    deployment = make_deployment(
        api, queue, entrypoint="sample.py:phases", parameters={"marker_dir": str(tmp_path)}
    )
    agent: subprocess.Popen[bytes] = start_agent(server, queue["id"])
    try:
        run = make_run(api, deployment)
        events: list[tuple[str, Any]] = []
        with (
            httpx.Client(base_url=server.url + "/", timeout=60) as streamer,
            streamer.stream("GET", f"flow_runs/{run['id']}/logs/stream") as response,
        ):
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            reader = threading.Thread(target=read_events, args=(response, events), daemon=True)
            reader.start()

            def lines() -> list[str]:
                return [data["line"] for name, data in events if name == "log"]

            # The first line arrives while the flow waits on its gate: streamed, not at the end.
            wait_for(lambda: "before" in lines(), timeout=30, what="the line 'before'")
            states = [data["state"]["type"] for name, data in events if name == "run"]
            assert states[-1] == "RUNNING", states
            (tmp_path / "go-1").touch()
            wait_for(lambda: "during 2" in lines(), timeout=10, what="the lines 'during …'")
            (tmp_path / "go-2").touch()
            reader.join(timeout=30)
            assert not reader.is_alive(), "the stream did not end with the run"
        assert lines() == ["before", "during 0", "during 1", "during 2", "after"]
        assert events[-1][0] == "end"
        assert [d["state"]["type"] for n, d in events if n == "run"][-1] == "COMPLETED"
        # A reconnect resumes after the last id seen (what Last-Event-ID carries).
        log_ids = [data["id"] for name, data in events if name == "log"]
        with httpx.Client(base_url=server.url + "/", timeout=30) as again:
            tail = again.get(
                f"flow_runs/{run['id']}/logs/stream", headers={"Last-Event-ID": str(log_ids[2])}
            ).text
        assert '"line":"during 2"' in tail and '"line":"during 1"' not in tail
    finally:
        assert stop(agent) == 0
    assert api.get(f"flow_runs/{'0' * 8}-0000-0000-0000-{'0' * 12}/logs/stream").status_code == 404


def test_the_ui_is_served_from_the_package_with_a_strict_csp(server: Server) -> None:
    root = server.url.removesuffix("/api")
    page = httpx.get(root + "/")
    assert page.status_code == 200 and '<script type="module" src="/ui/js/app.js">' in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp
    script = httpx.get(root + "/ui/js/app.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith(
        "text/javascript"
    )
    for bad in ("/ui/../app.py", "/ui/%2e%2e/web.py", "/ui/js/../../web.py", "/ui/nothing.js"):
        assert httpx.get(root + bad).status_code == 404, bad


def test_with_an_api_key_the_ui_files_are_public_and_its_data_is_not(tmp_path: Path) -> None:
    with running_server(tmp_path, extra_env={"AGENT_API_KEY": "k3y"}) as secured:
        root = secured.url.removesuffix("/api")
        assert httpx.get(root + "/").status_code == 200  # the files hold no data
        for path in (
            "overview",
            "flow_runs",
            f"flow_runs/{'0' * 8}-0000-0000-0000-{'0' * 12}/logs/stream",
        ):
            assert httpx.get(f"{secured.url}/{path}").status_code == 401, path
            # A key in the URL is no key: the UI never sends one that way, nor does the server read it.
            assert httpx.get(f"{secured.url}/{path}?api_key=k3y").status_code == 401, path
        good = httpx.get(f"{secured.url}/overview", headers={"Authorization": "Bearer k3y"})
        assert good.status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site", "Origin": "http://127.0.0.1:1"},
    ],
)
def test_a_cross_site_request_changes_nothing(api: httpx.Client, headers: dict[str, str]) -> None:
    run = make_run(api, make_deployment(api, make_queue(api), command=["true"]))
    for path in (f"flow_runs/{run['id']}/cancel", f"flow_runs/{run['id']}/rerun"):
        forged = api.post(path, headers=headers)
        assert forged.status_code == 403, forged.text
        assert "cross-site request refused" in forged.json()["detail"]
    assert api.get(f"flow_runs/{run['id']}").json()["state"]["type"] == "SCHEDULED"
    assert len(api.get("flow_runs", params={"deployment_id": run["deployment_id"]}).json()) == 1
    assert api.get(f"flow_runs/{run['id']}", headers=headers).status_code == 200  # reads: fine


def test_same_origin_and_non_browser_requests_go_through(server: Server, api: httpx.Client) -> None:
    host = server.url.removeprefix("http://").removesuffix("/api")
    deployment = make_deployment(api, make_queue(api), command=["true"])
    for headers in (
        {},  # the CLI and agents send no Origin
        {"Origin": f"http://{host}"},
        {"Sec-Fetch-Site": "same-origin", "Origin": "http://proxy.example"},  # Host rewritten
    ):
        run = make_run(api, deployment)
        cancelled = api.post(f"flow_runs/{run['id']}/cancel", headers=headers)
        assert cancelled.status_code == 200, (headers, cancelled.text)


def test_a_server_without_a_key_answers_only_to_loopback_names(
    server: Server, api: httpx.Client
) -> None:
    port = server.url.split(":")[2].split("/")[0]
    for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1.evil.example:{port}"):
        refused = api.get("work_queues", headers={"Host": host})
        assert refused.status_code == 403, host
        assert "DNS-rebinding" in refused.json()["detail"]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "localhost"):
        assert api.get("work_queues", headers={"Host": host}).status_code == 200, host


def test_a_server_with_a_key_answers_to_any_name(tmp_path: Path) -> None:
    with running_server(tmp_path, extra_env={"AGENT_API_KEY": "k3y"}) as secured:
        headers = {"Host": "flowagent.example", "Authorization": "Bearer k3y"}
        assert httpx.get(f"{secured.url}/work_queues", headers=headers).status_code == 200


def test_a_stream_asked_from_beyond_any_line_id_is_a_422_before_it_starts(
    api: httpx.Client,
) -> None:
    """A position past a 64-bit line id cannot be looked up; inside a started stream the error
    could only cut the connection (the OpenAPI fuzzer found that), so it is refused first."""
    run = make_run(api, make_deployment(api, make_queue(api), command=["true"]))
    huge = str(2**64)
    path = f"flow_runs/{run['id']}/logs/stream"
    assert api.get(path, params={"after": huge}).status_code == 422
    assert api.get(path, headers={"Last-Event-ID": huge}).status_code == 422
    assert api.get(f"flow_runs/{run['id']}/logs", params={"after": huge}).status_code == 422
