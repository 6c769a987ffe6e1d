"""Claiming runs: atomicity under concurrent claimers, limits, tag filters and the long poll.

The timing bounds here are behavioural, not benchmarks. A held claim woken by this server's own
notification answers within milliseconds; NOTIFIED is far above that yet below the 1 s sweep,
so a test only passes when the wake-up came from the notification and not from polling.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from tests.support import shared_server_on_each_database

if TYPE_CHECKING:
    from tests.integration.conftest import ServerFactory
    from tests.support import Api, Server

pytestmark = pytest.mark.integration

server = shared_server_on_each_database()

T = TypeVar("T")

# From the request that made work available to the held claim's answer.
NOTIFIED = 0.5
# Answers that involve no waiting at all, or the once-a-second claim sweep.
PROMPT = 2.0


def in_background(fn: Callable[[], T]) -> Future[T]:
    executor = ThreadPoolExecutor(max_workers=1)
    future = executor.submit(fn)
    executor.shutdown(wait=False)
    return future


@dataclass
class Claimed:
    runs: list[Any]
    elapsed: float  # seconds from sending the claim to its answer
    answered: float  # time.monotonic() at the answer

    @property
    def ids(self) -> list[str]:
        return [c["flow_run"]["id"] for c in self.runs]


def timed_claim(
    server: Server, queue: dict[str, Any], agent: dict[str, Any], **fields: Any
) -> Claimed:
    """One claim on its own connection: what it got and when."""
    with server.client() as client:
        started = time.monotonic()
        response = client.post(
            f"work_queues/{queue['id']}/claim", json={"agent_id": agent["id"], **fields}
        )
        answered = time.monotonic()
    assert response.status_code == 200, response.text
    return Claimed(list(response.json()), answered - started, answered)


def wait_until_held(seconds: float = 0.2) -> None:
    """Give a background claim time to reach the server and start waiting.

    The claims below would also succeed if the run showed up before they started waiting; this
    pause only makes sure the test exercises the wake-up rather than the first look.
    """
    time.sleep(seconds)


# --------------------------------------------------------------------------- the claim itself


def test_claim_hands_out_due_runs_soonest_first_with_their_deployment(api: Api) -> None:
    queue = api.queue()
    deployment = api.deployment(queue, parameters={"p": 1})
    agent = api.agent(queue)
    now = datetime.now(UTC)
    late = api.run(deployment, expected_start_time=(now - timedelta(minutes=1)).isoformat())
    early = api.run(deployment, expected_start_time=(now - timedelta(minutes=5)).isoformat())

    first = api.claim(queue, agent)
    assert len(first) == 1
    assert first[0]["flow_run"]["id"] == early["id"]
    assert first[0]["deployment"]["id"] == deployment["id"]
    assert first[0]["deployment"]["parameters"] == {"p": 1}
    claimed = first[0]["flow_run"]
    assert claimed["state"]["type"] == "PENDING" and claimed["agent_id"] == agent["id"]

    second = api.claim(queue, agent, limit=5)
    assert [c["flow_run"]["id"] for c in second] == [late["id"]]
    assert api.claim(queue, agent, limit=5) == []

    history = api.get(f"flow_runs/{early['id']}/states").json()
    assert [s["type"] for s in history] == ["SCHEDULED", "PENDING"]
    stored = api.get_run(early["id"])
    assert stored["state"]["type"] == "PENDING" and stored["agent_id"] == agent["id"]


def test_claim_errors(api: Api) -> None:
    queue = api.queue()
    agent = api.agent(queue)
    unknown_agent = uuid.uuid4()
    response = api.post(f"work_queues/{queue['id']}/claim", json={"agent_id": str(unknown_agent)})
    assert response.status_code == 404
    assert "heartbeat" in response.json()["detail"]

    missing = uuid.uuid4()
    response = api.post(f"work_queues/{missing}/claim", json={"agent_id": agent["id"]})
    assert response.status_code == 404
    assert response.json()["detail"] == f"work queue {missing} not found"

    too_long = api.post(
        f"work_queues/{queue['id']}/claim", json={"agent_id": agent["id"], "wait_seconds": 61}
    )
    assert too_long.status_code == 422


def test_limit_zero_answers_at_once(server: Server, api: Api) -> None:
    queue = api.queue()
    agent = api.agent(queue)
    api.run(api.deployment(queue))
    claimed = timed_claim(server, queue, agent, limit=0, wait_seconds=5)
    assert claimed.runs == []
    assert claimed.elapsed < PROMPT


def test_concurrent_claimers_never_share_a_run(
    server: Server, server_factory: ServerFactory, api: Api
) -> None:
    """300 runs, 16 claimers on two server processes sharing one database file."""
    queue = api.queue()
    deployment = api.deployment(queue)
    agents = [api.agent(queue) for _ in range(16)]
    run_ids = {api.run(deployment)["id"] for _ in range(300)}
    second = server_factory(server.home, database_url=server.database_url)
    servers = [server, second]

    def claimer(index: int) -> list[tuple[str, str]]:
        agent = agents[index]
        rng = random.Random(index)
        taken: list[tuple[str, str]] = []
        with servers[index % 2].client() as client:
            while True:
                response = client.post(
                    f"work_queues/{queue['id']}/claim",
                    json={"agent_id": agent["id"], "limit": rng.randint(1, 5)},
                )
                if response.status_code == 503:  # the database is busy: as agents do, retry
                    time.sleep(float(response.headers.get("Retry-After", "1")))
                    continue
                assert response.status_code == 200, response.text
                batch = response.json()
                if not batch:
                    return taken
                for claimed in batch:
                    assert claimed["flow_run"]["agent_id"] == agent["id"]
                    taken.append((claimed["flow_run"]["id"], agent["id"]))

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(claimer, range(16)))

    claims = [claim for result in results for claim in result]
    counts = Counter(run_id for run_id, _ in claims)
    assert set(counts) == run_ids
    assert max(counts.values()) == 1, "a run was handed out twice"
    assert sum(1 for result in results if result) > 1, "only one claimer ever won"

    owner = dict(claims)
    stored = api.get("flow_runs", params={"work_queue_id": queue["id"], "limit": 1000}).json()
    assert len(stored) == 300
    for run in stored:
        assert run["state"]["type"] == "PENDING"
        assert run["agent_id"] == owner[run["id"]]


def test_concurrency_limit_holds_under_concurrent_claimers(server: Server, api: Api) -> None:
    queue = api.queue(concurrency_limit=3)
    deployment = api.deployment(queue)
    agents = [api.agent(queue) for _ in range(8)]
    runs = [api.run(deployment) for _ in range(20)]

    def claim(agent: dict[str, Any]) -> list[Any]:
        return timed_claim(server, queue, agent, limit=5).runs

    with ThreadPoolExecutor(max_workers=8) as pool:
        claimed = [c for batch in pool.map(claim, agents) for c in batch]
    assert len(claimed) == 3
    assert api.claim(queue, agents[0], limit=5) == []

    # A slot is held through RUNNING and CANCELLING; only a terminal state frees it.
    first, second = (c["flow_run"]["id"] for c in claimed[:2])
    api.move(first, "RUNNING")
    api.move(second, "RUNNING", "CANCELLING")
    assert api.claim(queue, agents[0], limit=5) == []
    api.move(first, "COMPLETED")
    assert len(api.claim(queue, agents[0], limit=5)) == 1

    # Raising the limit opens more slots; the rest stay SCHEDULED.
    api.patch(f"work_queues/{queue['id']}", json={"concurrency_limit": 5})
    assert len(api.claim(queue, agents[1], limit=10)) == 2
    states = Counter(api.get_run(r["id"])["state"]["type"] for r in runs)
    assert states["SCHEDULED"] == 20 - 6


def test_tag_filters(api: Api) -> None:
    queue = api.queue(tags=["gpu"])
    gpu = api.deployment(queue, tags=["gpu"])
    plain = api.deployment(queue)
    agent = api.agent(queue)
    untagged = api.run(plain)
    gpu_only = api.run(gpu)
    gpu_linux = api.run(gpu, tags=["linux"])

    # The agent asks for linux too: the run must carry the queue's tags and the agent's.
    got = api.claim(queue, agent, tags=["linux"], limit=10)
    assert [c["flow_run"]["id"] for c in got] == [gpu_linux["id"]]
    got = api.claim(queue, agent, limit=10)
    assert [c["flow_run"]["id"] for c in got] == [gpu_only["id"]]
    assert api.claim(queue, agent, limit=10) == []
    assert api.get_run(untagged["id"])["state"]["type"] == "SCHEDULED"

    # Dropping the queue's filter lets the untagged run out.
    api.patch(f"work_queues/{queue['id']}", json={"tags": []})
    got = api.claim(queue, agent, limit=10)
    assert [c["flow_run"]["id"] for c in got] == [untagged["id"]]


def test_matching_runs_behind_many_non_matching_ones_are_found(api: Api) -> None:
    queue = api.queue()
    deployment = api.deployment(queue)
    agent = api.agent(queue)
    now = datetime.now(UTC)
    # More non-matching due runs than one page of the claim's scan (200), all older.
    for i in range(230):
        api.run(deployment, expected_start_time=(now - timedelta(hours=1, seconds=i)).isoformat())
    wanted = api.run(deployment, tags=["special"])
    got = api.claim(queue, agent, tags=["special"], limit=5)
    assert [c["flow_run"]["id"] for c in got] == [wanted["id"]]


def test_future_runs_are_not_claimed_early(server: Server, api: Api) -> None:
    queue = api.queue()
    deployment = api.deployment(queue)
    agent = api.agent(queue)
    api.run(deployment, expected_start_time=(datetime.now(UTC) + timedelta(hours=1)).isoformat())
    assert api.claim(queue, agent, limit=10) == []

    # A held claim wakes up when a future run's start time comes.
    soon = api.run(
        deployment, expected_start_time=(datetime.now(UTC) + timedelta(seconds=0.6)).isoformat()
    )
    claimed = timed_claim(server, queue, agent, limit=10, wait_seconds=5)
    assert claimed.ids == [soon["id"]]
    due = datetime.fromisoformat(soon["expected_start_time"])
    assert datetime.now(UTC) >= due
    # Woken by the start time itself: the next 1 s sweep would come later than this.
    late = (datetime.now(UTC) - due).total_seconds()
    assert late < NOTIFIED, f"handed out {late:.2f}s after it became due"


def test_runs_due_within_the_lead_are_handed_over_early(server: Server, api: Api) -> None:
    queue = api.queue()
    deployment = api.deployment(queue)
    agent = api.agent(queue)
    in_a_while = datetime.now(UTC) + timedelta(seconds=30)
    api.run(deployment, expected_start_time=in_a_while.isoformat())
    assert api.claim(queue, agent, limit=10, lead_seconds=2) == []

    # A held claim wakes up a lead before a run is due, and gets it then.
    soon = api.run(
        deployment, expected_start_time=(datetime.now(UTC) + timedelta(seconds=3)).isoformat()
    )
    claimed = timed_claim(server, queue, agent, limit=10, wait_seconds=5, lead_seconds=2)
    assert claimed.ids == [soon["id"]]
    early = datetime.fromisoformat(soon["expected_start_time"]) - datetime.now(UTC)
    assert 0 < early.total_seconds() <= 2


def test_deleted_deployments_runs_are_not_handed_out(api: Api) -> None:
    queue = api.queue()
    deployment = api.deployment(queue)
    agent = api.agent(queue)
    run = api.run(deployment)
    api.move(run["id"], "PENDING")
    api.delete(f"deployments/{deployment['id']}")
    # Handed back after its deployment is gone: nothing could launch it.
    api.move(run["id"], "SCHEDULED")
    assert api.claim(queue, agent) == []


# --------------------------------------------------------------------------- the long poll


def test_a_run_created_while_a_claim_waits_is_handed_out_promptly(server: Server, api: Api) -> None:
    queue = api.queue()
    deployment = api.deployment(queue)
    agent = api.agent(queue)
    # Several rounds, so that a lucky 1 s sweep cannot pass for the notification.
    for _ in range(3):
        held = in_background(lambda: timed_claim(server, queue, agent, wait_seconds=5))
        wait_until_held()
        run = api.run(deployment)
        created = time.monotonic()
        claimed = held.result(timeout=10)
        assert claimed.ids == [run["id"]]
        assert claimed.answered - created < NOTIFIED


def test_a_claim_with_nothing_due_answers_empty_after_wait_seconds(
    server: Server, api: Api
) -> None:
    queue = api.queue()
    agent = api.agent(queue)
    claimed = timed_claim(server, queue, agent, wait_seconds=1.5)
    assert claimed.runs == []
    assert 1.4 <= claimed.elapsed < 1.5 + PROMPT

    claimed = timed_claim(server, queue, agent, wait_seconds=0)
    assert claimed.runs == [] and claimed.elapsed < PROMPT


def test_a_run_for_another_queue_or_other_tags_does_not_end_the_wait(
    server: Server, api: Api
) -> None:
    queue = api.queue()
    other = api.queue()
    agent = api.agent(queue)
    held = in_background(lambda: timed_claim(server, queue, agent, tags=["gpu"], wait_seconds=1))
    wait_until_held()
    api.run(api.deployment(other))
    api.run(api.deployment(queue))  # lacks the agent's gpu tag
    claimed = held.result(timeout=10)
    assert claimed.runs == []
    assert claimed.elapsed >= 0.9


def test_a_paused_queue_hands_out_nothing_and_resuming_wakes_the_waiter(
    server: Server, api: Api
) -> None:
    queue = api.queue(paused=True)
    agent = api.agent(queue)
    run = api.run(api.deployment(queue))
    assert api.claim(queue, agent, limit=5) == []

    held = in_background(lambda: timed_claim(server, queue, agent, wait_seconds=5))
    wait_until_held()
    api.patch(f"work_queues/{queue['id']}", json={"paused": False})
    resumed = time.monotonic()
    claimed = held.result(timeout=10)
    assert claimed.ids == [run["id"]]
    assert claimed.answered - resumed < NOTIFIED


def test_a_freed_slot_wakes_the_waiter(server: Server, api: Api) -> None:
    queue = api.queue(concurrency_limit=1)
    deployment = api.deployment(queue)
    agent = api.agent(queue)
    first = api.run(deployment)
    second = api.run(deployment)
    assert [c["flow_run"]["id"] for c in api.claim(queue, agent)] == [first["id"]]

    held = in_background(lambda: timed_claim(server, queue, agent, wait_seconds=5))
    wait_until_held()
    api.move(first["id"], "RUNNING", "FAILED")
    freed = time.monotonic()
    claimed = held.result(timeout=10)
    assert claimed.ids == [second["id"]]
    assert claimed.answered - freed < NOTIFIED


def test_a_handed_back_run_wakes_the_waiter(server: Server, api: Api) -> None:
    queue = api.queue()
    agent = api.agent(queue)
    other_agent = api.agent(queue)
    run = api.run(api.deployment(queue))
    assert len(api.claim(queue, agent)) == 1

    held = in_background(lambda: timed_claim(server, queue, other_agent, wait_seconds=5))
    wait_until_held()
    api.move(run["id"], "SCHEDULED")
    handed_back = time.monotonic()
    claimed = held.result(timeout=10)
    assert claimed.ids == [run["id"]]
    assert claimed.runs[0]["flow_run"]["agent_id"] == other_agent["id"]
    assert claimed.answered - handed_back < NOTIFIED


def test_many_waiters_one_run_exactly_one_wins(server: Server, api: Api) -> None:
    queue = api.queue()
    agents = [api.agent(queue) for _ in range(6)]
    results: list[list[Any]] = []
    lock = threading.Lock()

    def wait_for_work(agent: dict[str, Any]) -> None:
        claimed = timed_claim(server, queue, agent, wait_seconds=1.5)
        with lock:
            results.append(claimed.runs)

    threads = [threading.Thread(target=wait_for_work, args=(a,)) for a in agents]
    for thread in threads:
        thread.start()
    wait_until_held()
    run = api.run(api.deployment(queue))
    for thread in threads:
        thread.join(timeout=10)
    winners = [claimed for claimed in results if claimed]
    assert len(results) == 6
    assert len(winners) == 1 and winners[0][0]["flow_run"]["id"] == run["id"]


def test_a_run_created_through_another_server_process_is_seen_within_a_second(
    server: Server, server_factory: ServerFactory, api: Api
) -> None:
    """Writes from another process wake nobody here; this server's claim sweep finds them."""
    other = server_factory(server.home, database_url=server.database_url)
    queue = api.queue()
    agent = api.agent(queue)
    deployment = api.deployment(queue)
    held = in_background(lambda: timed_claim(server, queue, agent, wait_seconds=5))
    wait_until_held()
    with other.client() as client:
        created = client.post(f"deployments/{deployment['id']}/runs", json={})
    assert created.status_code == 201
    claimed = held.result(timeout=10)
    assert claimed.ids == [created.json()["id"]]
    assert claimed.elapsed < 1.0 + PROMPT


def test_shutdown_releases_held_claims(server_factory: ServerFactory, tmp_path: Any) -> None:
    srv = server_factory(tmp_path / "home")
    with srv.client() as client:
        queue = client.post("work_queues", json={"name": "q"}).json()
        agent = client.post(
            "agents/heartbeat", json={"name": "a", "work_queue_id": queue["id"]}
        ).json()
    held = in_background(lambda: timed_claim(srv, queue, agent, wait_seconds=30))
    wait_until_held()
    started = time.monotonic()
    srv.process.terminate()
    assert held.result(timeout=10).runs == []
    srv.process.wait(timeout=10)
    assert time.monotonic() - started < PROMPT
