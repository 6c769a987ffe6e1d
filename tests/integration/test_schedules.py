"""Schedules through the API and the CLI, on a real server; late runs; runs starting on time."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.integration.test_schedules_harness import thread_server
from tests.support import (
    FLOWS,
    Server,
    cli,
    get_run,
    make_deployment,
    make_queue,
    make_run,
    running_server,
    start_agent,
    stop,
    wait_for,
    wait_state,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with thread_server(tmp_path_factory.mktemp("schedules")) as srv:
        yield srv


def schedule_runs(api: httpx.Client, deployment: dict[str, Any]) -> list[dict[str, Any]]:
    runs = api.get("flow_runs", params={"deployment_id": deployment["id"], "limit": 1000}).json()
    return sorted(runs, key=lambda r: r["expected_start_time"])


# An hourly schedule's runs within the 6 h horizon: 7 when an hour begins between the schedule's
# creation and the scheduler's next look (the horizon runs from the look).
HOURLY = (6, 7)


def parse(moment: str) -> datetime:
    return datetime.fromisoformat(moment)


def test_a_deployment_with_schedules_gets_runs_ahead_at_once(api: httpx.Client) -> None:
    queue = make_queue(api)
    deployment = make_deployment(
        api,
        queue,
        command=["true"],
        schedules=[
            {"cron": "0 * * * *", "timezone": "Europe/Paris"},
            {"interval_seconds": "15m", "catchup": "none"},
        ],
    )
    cron, interval = deployment["schedules"]
    assert cron["cron"] == "0 * * * *" and cron["timezone"] == "Europe/Paris"
    assert interval["interval_seconds"] == 900 and interval["catchup"] == "none"
    assert parse(cron["next_run_time"]).minute == 0

    # The create poked the scheduler: the hourly runs within the 6 h horizon and 20 (max_runs)
    # quarter-hourly ones, anchored at its creation, appear now.
    def on_the_hour(run: dict[str, Any]) -> bool:
        start = parse(run["expected_start_time"])
        return (start.minute, start.second, start.microsecond) == (0, 0, 0)

    def made() -> list[dict[str, Any]] | None:
        found = schedule_runs(api, deployment)
        hourly = sum(map(on_the_hour, found))
        return found if hourly in HOURLY and len(found) - hourly == 20 else None

    runs = wait_for(made, timeout=5, what="the scheduled runs")
    assert {r["state"]["type"] for r in runs} == {"SCHEDULED"}
    starts = [parse(r["expected_start_time"]) for r in runs]
    # the interval is anchored at its creation: its first run is due at once
    assert starts[0] == parse(interval["created"])
    assert all(start > datetime.now(UTC) for start in starts[1:])
    preview = api.get(f"work_queues/{queue['id']}/preview", params={"hours": 7}).json()
    assert len(preview) == len(runs)
    listed = api.get(f"deployments/{deployment['id']}/schedules").json()
    assert [s["id"] for s in listed] == [cron["id"], interval["id"]]


def test_redeploying_keeps_unchanged_schedules_and_replaces_the_others(
    api: httpx.Client,
) -> None:
    queue = make_queue(api)
    body = {"command": ["true"], "schedules": [{"cron": "0 * * * *"}]}
    first = make_deployment(api, queue, **body)
    wait_for(lambda: len(schedule_runs(api, first)) in HOURLY, timeout=5, what="6 runs")
    runs_before = {r["id"] for r in schedule_runs(api, first)}

    again = make_deployment(api, queue, name=first["name"], **body)
    assert again["schedules"][0]["id"] == first["schedules"][0]["id"]
    assert {r["id"] for r in schedule_runs(api, again)} == runs_before

    # No 'schedules' field: they stay as they are.
    kept = make_deployment(api, queue, name=first["name"], command=["true"])
    assert kept["schedules"][0]["id"] == first["schedules"][0]["id"]

    # A paused schedule stays paused across a redeploy that does not say 'active'.
    schedule_id = first["schedules"][0]["id"]
    assert api.patch(f"schedules/{schedule_id}", json={"active": False}).status_code == 200
    again = make_deployment(api, queue, name=first["name"], **body)
    assert again["schedules"][0]["active"] is False
    active = {"cron": "0 * * * *", "active": True}
    again = make_deployment(api, queue, name=first["name"], command=["true"], schedules=[active])
    assert again["schedules"][0]["active"] is True

    changed = make_deployment(
        api, queue, name=first["name"], command=["true"], schedules=[{"cron": "30 * * * *"}]
    )
    assert changed["schedules"][0]["id"] != first["schedules"][0]["id"]

    def moved() -> bool:
        minutes = {parse(r["expected_start_time"]).minute for r in schedule_runs(api, changed)}
        return minutes == {30}

    wait_for(moved, timeout=5, what="the old schedule's runs replaced by the new one's")

    cleared = make_deployment(api, queue, name=first["name"], command=["true"], schedules=[])
    assert cleared["schedules"] == []
    assert schedule_runs(api, cleared) == []


@pytest.mark.parametrize(
    ("schedule", "error"),
    [
        ({"cron": "61 * * * *"}, "invalid cron expression"),
        ({"cron": "0 * * * *", "timezone": "Mars/Olympus"}, "unknown time zone"),
        ({"cron": "0 * * * *", "interval_seconds": 60}, "exactly one"),
        ({"interval_seconds": "often"}, "not a duration"),
        ({"interval_seconds": 0}, "greater than 0"),
    ],
)
def test_invalid_schedules_are_refused(
    api: httpx.Client, schedule: dict[str, Any], error: str
) -> None:
    queue = make_queue(api)
    response = api.post(
        "deployments",
        json={"name": f"bad-{time.monotonic_ns()}", "work_queue_id": queue["id"]}
        | {"command": ["true"], "schedules": [schedule]},
    )
    assert response.status_code == 422, response.text
    assert error in response.json()["detail"]


def test_pause_resume_and_delete_a_schedule(api: httpx.Client) -> None:
    queue = make_queue(api)
    deployment = make_deployment(
        api, queue, command=["true"], schedules=[{"interval_seconds": 3600}]
    )
    schedule = deployment["schedules"][0]
    # now (its anchor is its creation), then hourly up to the 6-hour horizon
    wait_for(lambda: len(schedule_runs(api, deployment)) == 7, timeout=5, what="7 runs")

    paused = api.patch(f"schedules/{schedule['id']}", json={"active": False}).json()
    assert paused["active"] is False and paused["next_run_time"] is None
    assert schedule_runs(api, deployment) == []  # the runs made ahead are gone

    resumed = api.patch(f"schedules/{schedule['id']}", json={"active": True}).json()
    assert resumed["active"] is True
    wait_for(lambda: len(schedule_runs(api, deployment)) in HOURLY, timeout=5, what="6 runs again")

    assert api.delete(f"schedules/{schedule['id']}").status_code == 204
    assert schedule_runs(api, deployment) == []
    assert api.get(f"schedules/{schedule['id']}").status_code == 404


def test_a_run_not_started_in_time_shows_late(server: Server, api: httpx.Client) -> None:
    queue = make_queue(api)
    deployment = make_deployment(api, queue, command=["true"])
    an_hour_ago = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    run = make_run(api, deployment, expected_start_time=an_hour_ago)
    on_time = make_run(api, deployment)

    # The preview says so at once; the scheduler's next pass records it.
    preview = api.get(f"work_queues/{queue['id']}/preview").json()
    assert {r["id"]: r["state"]["name"] for r in preview}[run["id"]] == "Late"
    late = wait_state_name(api, run["id"], "Late")
    assert late["state"]["type"] == "SCHEDULED"
    assert "not started within 15s" in late["state"]["message"]
    assert api.get(f"flow_runs/{on_time['id']}").json()["state"]["name"] == "Scheduled"

    listed = cli(server, "flow-run", "ls", "--queue", queue["name"]).stdout
    line = next(line for line in listed.splitlines() if run["id"] in line)
    assert "Late" in line
    previewed = cli(server, "work-queue", "preview", queue["name"], "--json").stdout
    assert '"name": "Late"' in previewed


def wait_state_name(api: httpx.Client, run_id: str, name: str) -> dict[str, Any]:
    def named() -> dict[str, Any] | None:
        run = dict(api.get(f"flow_runs/{run_id}").json())
        return run if run["state"]["name"] == name else None

    return wait_for(named, timeout=5, what=f"run {run_id} to be {name}")


def test_schedule_commands(server: Server, api: httpx.Client) -> None:
    queue = make_queue(api)
    name = f"hourly-{time.monotonic_ns()}"
    created = cli(
        server,
        "deployment",
        "create",
        "--name",
        name,
        "--queue",
        queue["name"],
        "--command",
        "true",
        "--cron",
        "0 * * * *",
        "--timezone",
        "Europe/Paris",
        "--catchup",
        "none",
    )
    deployment_id = created.stdout.strip()
    schedules = api.get(f"deployments/{deployment_id}/schedules").json()
    assert [(s["cron"], s["timezone"], s["catchup"]) for s in schedules] == [
        ("0 * * * *", "Europe/Paris", "none")
    ]

    added = cli(server, "deployment", "schedule", "add", name, "--interval", "2h")
    interval_id = added.stdout.splitlines()[0].strip()
    assert "every 2h" in added.stdout

    listed = cli(server, "deployment", "schedule", "ls", name).stdout
    assert "cron 0 * * * * (Europe/Paris)" in listed and "every 2h" in listed
    assert listed.count("active") == 2

    cli(server, "deployment", "schedule", "pause", interval_id)
    listed = cli(server, "deployment", "schedule", "ls", name).stdout
    assert "paused" in listed and listed.count("active") == 1
    cli(server, "deployment", "schedule", "pause", name)  # every schedule of the deployment
    assert cli(server, "deployment", "schedule", "ls", name).stdout.count("paused") == 2
    cli(server, "deployment", "schedule", "resume", name)
    assert cli(server, "deployment", "schedule", "ls", name).stdout.count("active") == 2

    cli(server, "deployment", "schedule", "delete", interval_id, "--yes")
    remaining = api.get(f"deployments/{deployment_id}/schedules").json()
    assert [s["cron"] for s in remaining] == ["0 * * * *"]

    bad = cli(server, "deployment", "schedule", "add", name, "--cron", "nope", check=False)
    assert bad.returncode == 1 and "invalid cron expression" in bad.stderr
    bad = cli(server, "deployment", "schedule", "add", name, "--interval", "soon", check=False)
    assert bad.returncode == 1 and "not a duration" in bad.stderr
    bad = cli(
        server,
        "deployment",
        "schedule",
        "add",
        name,
        "--cron",
        "0 * * * *",
        "--timezone",
        "X/Y",
        check=False,
    )
    assert bad.returncode == 1 and "no such time zone" in bad.stderr


def test_a_deployment_file_may_carry_schedules(
    server: Server, api: httpx.Client, tmp_path: Path
) -> None:
    queue = make_queue(api)
    name = f"filed-{time.monotonic_ns()}"
    (tmp_path / "deploy.yaml").write_text(
        f"name: {name}\n"
        f"queue: {queue['name']}\n"
        "command: 'true'\n"
        "schedules:\n"
        "  - cron: '*/30 * * * *'\n"
        "    timezone: Europe/Paris\n"
        "  - interval_seconds: 15m\n"
        "    catchup: none\n"
    )
    cli(server, "deployment", "create", "--file", str(tmp_path / "deploy.yaml"))
    deployment = api.get(f"deployments/name/{name}").json()
    kinds = [(s["cron"], s["interval_seconds"], s["catchup"]) for s in deployment["schedules"]]
    assert kinds == [("*/30 * * * *", None, "one"), (None, 900.0, "none")]


# --------------------------------------------------------------------------- real processes


@pytest.fixture(scope="module")
def real_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("on-time")) as srv:
        yield srv


@pytest.fixture
def agent_on(real_server: Server) -> Iterator[Any]:
    started: list[subprocess.Popen[bytes]] = []

    def start(queue: dict[str, Any], **env: str) -> subprocess.Popen[bytes]:
        name = f"a-{time.monotonic_ns()}"
        process = start_agent(real_server, queue["id"], "--name", name, **env)
        started.append(process)
        return process

    yield start
    for process in started:
        assert stop(process) == 0


def test_runs_due_later_start_on_time(real_server: Server, agent_on: Any) -> None:
    """An idle agent's long poll wakes at the run's time: no polling delay."""
    with real_server.client() as api:
        queue = make_queue(api)
        deployment = make_deployment(api, queue, entrypoint="sample.py:add", working_dir=str(FLOWS))
        agent_on(queue)
        wait_for(
            lambda: any(a["work_queue_id"] == queue["id"] for a in api.get("agents").json()),
            timeout=20,
            what="the agent's first heartbeat",
        )
        soon = datetime.now(UTC) + timedelta(seconds=1.5)
        run = make_run(
            api, deployment, parameters={"a": 1, "b": 2}, expected_start_time=soon.isoformat()
        )
        # …and a schedule whose first time is 2 s away (interval anchored there).
        anchor = datetime.now(UTC) + timedelta(seconds=2)
        scheduled = make_deployment(
            api,
            queue,
            entrypoint="sample.py:add",
            working_dir=str(FLOWS),
            parameters={"a": 2, "b": 3},
            schedules=[{"interval_seconds": 3600, "anchor": anchor.isoformat()}],
        )
        done = wait_state(api, run["id"], timeout=30)
        assert done["state"]["type"] == "COMPLETED"
        late_by = parse(done["start_time"]) - parse(done["expected_start_time"])
        assert timedelta(0) <= late_by < timedelta(seconds=1), late_by

        first = wait_for(
            lambda: [r for r in schedule_runs(api, scheduled) if r["start_time"]],
            timeout=30,
            what="the scheduled run to start",
        )[0]
        assert parse(first["expected_start_time"]) == anchor
        late_by = parse(first["start_time"]) - anchor
        assert timedelta(0) <= late_by < timedelta(seconds=1), late_by


def test_two_server_processes_make_each_scheduled_run_once(tmp_path: Path) -> None:
    with (
        running_server(tmp_path / "shared") as first,
        running_server(tmp_path / "shared") as second,
        first.client() as api_a,
        second.client() as api_b,
    ):
        queue = make_queue(api_a)
        deployment = make_deployment(
            api_a, queue, command=["true"], schedules=[{"interval_seconds": 600}]
        )
        schedule_id = deployment["schedules"][0]["id"]
        # Poke the second server's scheduler too: both make runs for the same times.
        for _ in range(5):
            for api in (api_a, api_b):

                def patched(api: httpx.Client = api) -> bool:
                    response = api.patch(f"schedules/{schedule_id}", json={"catchup": "one"})
                    # 503 + Retry-After: the other process holds the write lock; try again
                    assert response.status_code in (200, 503), response.text
                    return response.status_code == 200

                wait_for(patched, timeout=15, what="PATCH schedule")
        runs = wait_for(
            lambda: len(found := schedule_runs(api_a, deployment)) >= 100 and found,
            timeout=15,
            what="a day of 10-minute runs (capped at 100)",
        )
        times = Counter(r["expected_start_time"] for r in runs)
        assert max(times.values()) == 1
        starts = sorted(parse(t) for t in times)
        assert starts == [starts[0] + timedelta(minutes=10 * i) for i in range(len(starts))]
        # 100 waiting ahead at most (+1: the first, due at creation, is not "ahead")
        assert len(runs) <= 101


def test_deleting_a_deployment_deletes_its_schedules(api: httpx.Client) -> None:
    queue = make_queue(api)
    deployment = make_deployment(api, queue, command=["true"], schedules=[{"cron": "0 * * * *"}])
    schedule_id = deployment["schedules"][0]["id"]
    wait_for(lambda: len(schedule_runs(api, deployment)) in HOURLY, timeout=5, what="6 runs")
    assert api.delete(f"deployments/{deployment['id']}").status_code == 204
    assert api.get(f"schedules/{schedule_id}").status_code == 404
    states = {(r["state"]["type"], r["state"]["message"]) for r in schedule_runs(api, deployment)}
    assert states == {("CANCELLED", f"deployment {deployment['name']!r} was deleted")}


def wait_agent(api: httpx.Client, queue: dict[str, Any]) -> None:
    wait_for(
        lambda: any(a["work_queue_id"] == queue["id"] for a in api.get("agents").json()),
        timeout=20,
        what="the agent's first heartbeat",
    )


def scheduled_run(
    api: httpx.Client, agent_on: Any, marker_dir: Path, *, lead: float, due_in: float
) -> tuple[dict[str, Any], datetime]:
    """A `record` run due in ``due_in`` s, on a queue whose agent claims ``lead`` s ahead."""
    queue = make_queue(api)
    parameters = {"marker_dir": str(marker_dir), "seconds": 0.1}
    deployment = make_deployment(api, queue, entrypoint="sample.py:record", parameters=parameters)
    agent_on(queue, AGENT_START_LEAD_SECONDS=str(lead))
    wait_agent(api, queue)
    due = datetime.now(UTC) + timedelta(seconds=due_in)
    return make_run(api, deployment, expected_start_time=due.isoformat()), due


def test_a_run_handed_over_early_begins_at_its_time(
    real_server: Server, agent_on: Any, tmp_path: Path
) -> None:
    """Claimed a lead ahead and launched while PENDING, its flow begins on time, never early."""
    with real_server.client() as api:
        run, due = scheduled_run(api, agent_on, tmp_path, lead=1.5, due_in=2.5)
        done = wait_state(api, run["id"], timeout=30)
        assert done["state"]["type"] == "COMPLETED", done["state"]
        [mark] = [json.loads(p.read_text()) for p in tmp_path.glob("*.json")]
        assert mark["start"] >= due.timestamp()  # the flow's first act, by its own clock
        states = api.get(f"flow_runs/{run['id']}/states").json()
        pending = parse(next(s["timestamp"] for s in states if s["type"] == "PENDING"))
        running = parse(next(s["timestamp"] for s in states if s["type"] == "RUNNING"))
        assert pending < due <= running  # claimed ahead; RUNNING when its time came


def test_a_run_cancelled_while_launched_early_never_begins(
    real_server: Server, agent_on: Any, tmp_path: Path
) -> None:
    with real_server.client() as api:
        run, due = scheduled_run(api, agent_on, tmp_path, lead=3, due_in=4)
        wait_for(lambda: early_process(run["id"]) is not None, what="the run's process, early")
        assert get_run(api, run["id"])["state"]["type"] == "PENDING"

        assert api.post(f"flow_runs/{run['id']}/cancel").status_code in (200, 202)
        assert get_run(api, run["id"])["state"]["type"] == "CANCELLED"
        wait_for(lambda: early_process(run["id"]) is None, timeout=15, what="it to be stopped")
        assert datetime.now(UTC) >= due  # stopped when it was refused RUNNING at its time
        assert list(tmp_path.glob("*.json")) == []  # its flow never began


def early_process(run_id: str) -> psutil.Process | None:
    """The live process whose environment names ``run_id``, if any."""
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if process.status() != psutil.STATUS_ZOMBIE and (
                process.environ().get("FLOWAGENT_RUN_ID") == run_id
            ):
                return process
    return None
