"""Notifications end to end: a real server calls a real webhook receiver on loopback.

The server runs with fast retry delays (``FAST_NOTIFICATIONS``: 0.05 s, doubling, 4 attempts)
and a clock the OFFLINE test moves forward, so nothing here sleeps for a real interval.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.test_schedules_harness import (
    Clock,
    Receiver,
    thread_server,
    webhook_receiver,
)
from tests.support import (
    Server,
    cli,
    make_deployment,
    make_queue,
    make_run,
    running_server,
    wait_for,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def clock() -> Clock:
    return Clock()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, clock: Clock) -> Iterator[Server]:
    # Its receivers are on loopback, which a server refuses unless told otherwise.
    home = tmp_path_factory.mktemp("notifications")
    with thread_server(home, clock=clock, webhook_allow_private=True) as srv:
        yield srv


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with webhook_receiver() as hook:
        yield hook


def notify(api: httpx.Client, url: str, **fields: Any) -> dict[str, Any]:
    response = api.post("notifications", json={"webhook_url": url, **fields})
    assert response.status_code == 201, response.text
    return dict(response.json())


def finish(api: httpx.Client, run: dict[str, Any], state: str, message: str) -> None:
    for step in ("PENDING", "RUNNING"):
        assert api.post(f"flow_runs/{run['id']}/set_state", json={"type": step}).status_code == 200
    response = api.post(
        f"flow_runs/{run['id']}/set_state", json={"type": state, "message": message}
    )
    assert response.status_code == 200, response.text


def deliveries(api: httpx.Client, notification: dict[str, Any]) -> list[dict[str, Any]]:
    return list(api.get(f"notifications/{notification['id']}/deliveries").json())


def settled(api: httpx.Client, notification: dict[str, Any], count: int = 1) -> list[Any]:
    def done() -> list[Any] | None:
        found = deliveries(api, notification)
        ok = len(found) >= count and all(d["status"] != "PENDING" for d in found)
        return found if ok else None

    return wait_for(done, timeout=10, what=f"{count} settled deliveries")


def test_a_failed_run_posts_a_signed_event(api: httpx.Client, receiver: Receiver) -> None:
    queue = make_queue(api)
    deployment = make_deployment(api, queue, command=["false"])
    secret = "s3cret-hmac-key"
    notification = notify(
        api, receiver.url, on=["FAILED", "CRASHED"], work_queue_id=queue["id"], secret=secret
    )
    assert notification["has_secret"] is True and "secret" not in notification
    run = make_run(api, deployment)
    finish(api, run, "FAILED", "exited with 1")

    [delivery] = settled(api, notification)
    assert (delivery["status"], delivery["attempts"]) == ("DELIVERED", 1)
    [got] = receiver.received
    event = got.json()
    assert event["event"] == "FAILED"
    assert event["flow_run"]["id"] == run["id"] and event["flow_run"]["name"] == run["name"]
    assert event["flow_run"]["attempt"] == 1
    assert event["deployment"] == {"id": deployment["id"], "name": deployment["name"]}
    assert event["work_queue"] == {"id": queue["id"], "name": queue["name"]}
    assert event["state"]["type"] == "FAILED" and event["state"]["message"] == "exited with 1"
    assert event["state"]["timestamp"] and event["timestamp"]
    assert event["notification"]["id"] == notification["id"]
    assert event["logs_url"].endswith(f"/api/flow_runs/{run['id']}/logs")
    # The link works: it is this server's API.
    assert httpx.get(event["logs_url"]).status_code == 200

    headers = {k.lower(): v for k, v in got.headers.items()}
    expected = hmac.new(secret.encode(), got.body, hashlib.sha256).hexdigest()
    assert headers["x-flowagent-signature"] == f"sha256={expected}"
    assert headers["content-type"] == "application/json"
    assert headers["x-flowagent-event"] == "FAILED"


def test_a_receiver_failing_twice_gets_the_event_on_the_third_attempt(
    api: httpx.Client,
) -> None:
    with webhook_receiver(codes=[500, 503]) as flaky:
        queue = make_queue(api)
        deployment = make_deployment(api, queue, command=["false"])
        notification = notify(api, flaky.url, on=["FAILED"], deployment_id=deployment["id"])
        finish(api, make_run(api, deployment), "FAILED", "boom")
        [delivery] = settled(api, notification)
        assert len(flaky.received) == 3
        assert len({r.body for r in flaky.received}) == 1, "the same event each time"
    assert delivery["status"] == "DELIVERED"
    assert delivery["attempts"] == 3
    history = [(a["attempt"], a["ok"], a["status_code"]) for a in delivery["history"]]
    assert history == [(1, False, 500), (2, False, 503), (3, True, 200)]
    listed = {n["id"]: n for n in api.get("notifications").json()}
    last = listed[notification["id"]]["last_delivery"]
    assert (last["status"], last["attempts"], last["last_status_code"]) == ("DELIVERED", 3, 200)


def test_giving_up_after_the_last_attempt_or_a_refusal(api: httpx.Client) -> None:
    queue = make_queue(api)
    deployment = make_deployment(api, queue, command=["false"])
    with webhook_receiver(codes=[500] * 10) as down, webhook_receiver(codes=[404]) as gone:
        down_n = notify(api, down.url, on=["FAILED"], work_queue_id=queue["id"])
        gone_n = notify(api, gone.url, on=["FAILED"], work_queue_id=queue["id"])
        finish(api, make_run(api, deployment), "FAILED", "boom")
        [failed] = settled(api, down_n)
        [refused] = settled(api, gone_n)
    assert (failed["status"], failed["attempts"]) == ("FAILED", 4)  # max_attempts
    # The status only: what the target answered ("ok") is not reflected through the API.
    assert failed["last_error"] == "HTTP 500 Internal Server Error"
    assert (refused["status"], refused["attempts"]) == ("FAILED", 1)  # a 404 is not retried
    # An unreachable webhook fails the same way, with the connection error recorded.
    with webhook_receiver() as closed:
        url = closed.url
    unreachable = notify(api, url, on=["FAILED"], work_queue_id=queue["id"])
    finish(api, make_run(api, deployment), "FAILED", "boom")
    [last] = [d for d in settled(api, unreachable) if d["notification_id"] == unreachable["id"]]
    assert last["status"] == "FAILED" and "Connect" in last["last_error"]


def test_only_matching_runs_and_states_are_notified(api: httpx.Client, receiver: Receiver) -> None:
    queue, other_queue = make_queue(api), make_queue(api)
    deployment = make_deployment(api, queue, command=["true"], tags=["etl"])
    other = make_deployment(api, other_queue, command=["true"])
    by_tag = notify(
        api, receiver.url, on=["COMPLETED"], tag="etl", name=f"tag-{time.monotonic_ns()}"
    )
    by_queue = notify(api, receiver.url, on=["CANCELLED"], work_queue_id=other_queue["id"])

    finish(api, make_run(api, deployment), "COMPLETED", "completed")  # by_tag
    finish(api, make_run(api, other), "COMPLETED", "completed")  # nobody: no tag, not cancelled
    finish(api, make_run(api, deployment), "FAILED", "boom")  # nobody: not COMPLETED
    cancelled = make_run(api, other)
    assert api.post(f"flow_runs/{cancelled['id']}/cancel").status_code == 200  # by_queue

    settled(api, by_tag)
    settled(api, by_queue)
    time.sleep(0.3)  # a few worker polls: nothing else arrives
    events = sorted((e["notification"]["name"], e["event"]) for e in receiver.bodies())
    assert events == sorted([(by_tag["name"], "COMPLETED"), (by_queue["name"], "CANCELLED")])


def test_a_late_run_can_be_notified(api: httpx.Client, receiver: Receiver) -> None:
    queue = make_queue(api)
    deployment = make_deployment(api, queue, command=["true"])
    notification = notify(api, receiver.url, on=["LATE"], work_queue_id=queue["id"])
    run = make_run(api, deployment, expected_start_time="2020-01-01T00:00:00Z")
    [delivery] = settled(api, notification)
    assert delivery["event"] == "LATE"
    event = receiver.bodies()[0]
    assert event["flow_run"]["id"] == run["id"]
    assert (event["state"]["type"], event["state"]["name"]) == ("SCHEDULED", "Late")


def test_an_agent_going_offline_is_notified_once(
    api: httpx.Client, receiver: Receiver, clock: Clock
) -> None:
    queue = make_queue(api)
    notification = notify(api, receiver.url, on=["OFFLINE"], work_queue_id=queue["id"])
    agent = api.post(
        "agents/heartbeat",
        json={"name": f"silent-{time.monotonic_ns()}", "work_queue_id": queue["id"]},
    ).json()
    time.sleep(0.3)
    assert deliveries(api, notification) == []  # heartbeating: not offline
    clock.offset += timedelta(minutes=2)  # the server's clock: two minutes of silence
    try:
        [delivery] = settled(api, notification)
        time.sleep(0.3)  # more OFFLINE checks: still one event for this silence
        assert len(deliveries(api, notification)) == 1
    finally:
        clock.offset -= timedelta(minutes=2)
    event = receiver.bodies()[0]
    assert delivery["event"] == event["event"] == "OFFLINE"
    assert event["agent"]["id"] == agent["id"] and event["agent"]["name"] == agent["name"]
    assert event["work_queue"]["id"] == queue["id"]
    assert "stopped heartbeating" in event["message"]


def test_invalid_notifications_are_refused(api: httpx.Client) -> None:
    queue = make_queue(api)
    deployment = make_deployment(api, queue, command=["true"])
    bad = [
        ({"on": ["EXPLODED"], "webhook_url": "http://x"}, "unknown event"),
        ({"on": ["FAILED"], "webhook_url": "ftp://x"}, "http:// or https://"),
        ({"on": [], "webhook_url": "http://x"}, "at least 1"),
        (
            {"on": ["OFFLINE"], "webhook_url": "http://x", "deployment_id": deployment["id"]},
            "cannot be filtered by deployment",
        ),
    ]
    for body, error in bad:
        response = api.post("notifications", json=body)
        assert response.status_code == 422, response.text
        assert error in response.json()["detail"]
    missing = api.post(
        "notifications",
        json={"on": ["FAILED"], "webhook_url": "http://x", "work_queue_id": deployment["id"]},
    )
    assert missing.status_code == 404


def test_notification_commands(server: Server, api: httpx.Client, receiver: Receiver) -> None:
    queue = make_queue(api)
    deployment = make_deployment(api, queue, command=["false"])
    name = f"pager-{time.monotonic_ns()}"
    created = cli(
        server,
        "notification",
        "create",
        "--name",
        name,
        "--on",
        "failed,CRASHED",
        "--queue",
        queue["name"],
        "--webhook",
        receiver.url,
        "--secret",
        "k",
    )
    notification_id = created.stdout.strip()
    stored = api.get(f"notifications/{notification_id}").json()
    assert stored["on"] == ["FAILED", "CRASHED"] and stored["work_queue_id"] == queue["id"]

    listed = cli(server, "notification", "ls").stdout
    line = next(line for line in listed.splitlines() if name in line)
    assert "FAILED,CRASHED" in line and f"queue {queue['name']}" in line and "(signed)" in line

    finish(api, make_run(api, deployment), "FAILED", "boom")
    settled(api, stored)
    line = next(
        line for line in cli(server, "notification", "ls").stdout.splitlines() if name in line
    )
    assert "DELIVERED FAILED (HTTP 200, 1 attempt)" in line

    tested = cli(server, "notification", "test", name)
    assert "DELIVERED TEST" in tested.stdout
    assert [b["event"] for b in receiver.bodies()] == ["FAILED", "TEST"]
    history = cli(server, "notification", "deliveries", name).stdout
    assert "TEST" in history and "#1 ok 200" in history

    unknown = cli(
        server, "notification", "create", "--on", "NOPE", "--webhook", "http://x", check=False
    )
    assert unknown.returncode == 1 and "no such event" in unknown.stderr

    cli(server, "notification", "delete", name, "--yes")
    assert api.get(f"notifications/{notification_id}").status_code == 404


INTERNAL = [
    "http://127.0.0.1:9/hook",
    "http://localhost:9/hook",
    "http://[::1]:9/hook",
    "http://[::ffff:127.0.0.1]:9/hook",
    "http://10.1.2.3/hook",
    "http://192.168.0.1/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://0.0.0.0:9/hook",
    "http://224.0.0.1/hook",
]


def test_webhooks_to_internal_addresses_are_refused_unless_allowed(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with webhook_receiver() as hook:
        # Created where it was allowed; then the server is restarted without the setting.
        with (
            running_server(home, {"AGENT_WEBHOOK_ALLOW_PRIVATE": "true"}) as allowing,
            allowing.client() as api,
        ):
            allowed = notify(api, hook.url, on=["FAILED"])
        with running_server(home) as server, server.client() as api:
            for url in INTERNAL:
                response = api.post("notifications", json={"webhook_url": url, "on": ["FAILED"]})
                assert response.status_code == 422, (url, response.text)
                detail = response.json()["detail"]
                assert "non-public address" in detail and "AGENT_WEBHOOK_ALLOW_PRIVATE" in detail
            refused = cli(server, "notification", "create", "--on", "FAILED",
                          "--webhook", hook.url, check=False)  # fmt: skip
            assert refused.returncode != 0
            assert "127.0.0.1" in refused.stderr and "webhook_allow_private" in refused.stderr
            # At delivery the address is checked again: nothing reaches the receiver.
            assert api.post(f"notifications/{allowed['id']}/test").status_code == 202
            [delivery] = settled(api, allowed)
            assert delivery["status"] == "FAILED" and delivery["attempts"] == 1
            assert delivery["last_error"].startswith("refused: 127.0.0.1 is 127.0.0.1")
            assert hook.received == []
