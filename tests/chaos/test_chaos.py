"""The chaos suite: many runs, many agents, and everything that can go wrong going wrong.

A real server, 8 real agents on one queue and one host (each through a TCP fault proxy of
ours), a few hundred short runs whose flows record every execution (run, attempt, pid, agent,
start, last seen alive, end) to marker files. While they run: agents are SIGKILLed and restarted
at every point of their lease (at once, after their fence fired, after the lease), SIGKILLed the
instant a flow's process appears, their fences are killed (and then the agent), a second agent
tries to start under a live agent's name, the server is SIGKILLed and restarted, the proxy delays
and resets connections, and one agent is cut off for longer than its lease. Every run carries a tag with a concurrency
limit, and a quarter of them belong to a deployment limited to two at once: the active runs are
sampled from the API every 50 ms throughout. Then the work the flows did is counted (no attempt
executed twice, no two executions of a run overlapping, no finished work done again unless its
agent was out of reach longer than the lease, no limit exceeded by the server's count or by the
executions themselves) and the figures printed.

It runs twice: on one server with SQLite, and on two server replicas sharing one PostgreSQL
(``replicas``), each agent given both replicas' URLs (through a proxy each): there a replica is
SIGKILLed and restarted besides whatever the dice say, and PostgreSQL itself is restarted once.

Size: ``CHAOS_RUNS`` (default 240, what CI affords); ``CHAOS_RUNS=10000`` for the big one.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.faultproxy import FaultProxy
from tests.postgres import PostgresCluster, postgres_cluster  # noqa: F401 (a fixture)
from tests.support import (
    AGENT,
    FLOWS,
    TERMINAL,
    ActiveSampler,
    base_env,
    free_port,
    running_server,
    stop,
)

pytestmark = pytest.mark.integration

RUNS = int(os.environ.get("CHAOS_RUNS", "240"))
AGENTS = 8
TAG, TAG_LIMIT = "chaos-db", 12  # the fleet has 32 slots: the tag limit binds
DEPLOYMENT_LIMIT = 2  # every LIMITED_EVERY-th run is of the deployment limited to this
LIMITED_EVERY = 4
LEASE = 6.0
GRACE = 6.0  # time a run may take to resolve beyond the lease (lease check, report, retry)
SEED = int(os.environ.get("CHAOS_SEED", "7"))
AGENT_ACTIONS = {
    "kill_agent",
    "kill_at_spawn",
    "restart_after_fence",
    "restart_after_lease",
    "kill_fence",
    "twin",
}
ACTIONS = [*sorted(AGENT_ACTIONS), "kill_agent", "delay", "reset", "server", "partition", "calm"]


@dataclass
class Fleet:
    """The agents, each behind its own proxy so one can be partitioned alone."""

    server_env: dict[str, str]
    queue_id: str
    home: Path
    proxies: list[list[FaultProxy]]  # per agent: one per server replica, tried in turn
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    kills: list[tuple[str, float]] = field(default_factory=list)
    starts: list[tuple[str, float]] = field(default_factory=list)  # (name, time.time())
    # index -> the monotonic time to start it again
    pending: dict[int, float] = field(default_factory=dict)
    started_at: dict[str, float] = field(default_factory=dict)

    def env(self, index: int) -> dict[str, str]:
        return self.server_env | {
            "AGENT_API_URL": ",".join(
                f"http://127.0.0.1:{proxy.port}/api" for proxy in self.proxies[index]
            ),
            "AGENT_HEARTBEAT_SECONDS": "0.5",
            "AGENT_CANCEL_POLL_SECONDS": "0.5",
            "AGENT_LIMIT": "4",
            "AGENT_STARTUP_TIMEOUT_SECONDS": "60",
            "AGENT_REQUEST_TIMEOUT_SECONDS": "3",
            "AGENT_CLAIM_WAIT_SECONDS": "2",
            "AGENT_DRAIN_TIMEOUT_SECONDS": "60",
            "CHAOS_AGENT": f"chaos-{index}",
        }

    def start(self, index: int) -> None:
        name = f"chaos-{index}"
        self.started_at[name] = time.monotonic()
        self.starts.append((name, time.time()))
        with (self.home / f"{name}.log").open("ab") as log:
            self.processes[name] = subprocess.Popen(
                [AGENT, "start", self.queue_id, "--name", name],
                env=self.env(index),
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def kill(self, index: int) -> None:
        name = f"chaos-{index}"
        process = self.processes[name]
        process.send_signal(signal.SIGKILL)
        process.wait()
        self.kills.append((name, time.time()))

    def kill_for(self, index: int, seconds: float) -> None:
        """SIGKILL agent ``index`` now and start it again ``seconds`` later (in ``tick``)."""
        self.kill(index)
        self.pending[index] = time.monotonic() + seconds

    def tick(self) -> None:
        for index, at in list(self.pending.items()):
            if time.monotonic() >= at:
                del self.pending[index]
                self.start(index)

    def alive(self, index: int) -> bool:
        return index not in self.pending and self.processes[f"chaos-{index}"].poll() is None

    def flow_appears(self, index: int, timeout: float) -> bool:
        """Wait until agent ``index`` has a child other than its fence: a run's process that
        may not have exec'd its flow yet (the spawn window)."""
        deadline = time.monotonic() + timeout
        parent = psutil.Process(self.processes[f"chaos-{index}"].pid)
        known = {p.pid for p in parent.children()}
        while time.monotonic() < deadline:
            for child in parent.children():
                if child.pid in known:
                    continue
                try:
                    if "agent.fence" not in child.cmdline():
                        return True
                except psutil.Error:
                    return True
            time.sleep(0.0005)
        return False

    def kill_fence(self, index: int) -> bool:
        pid_file = self.home / "server" / "agents" / f"chaos-{index}" / "fence.pid"
        try:
            fence = psutil.Process(int(pid_file.read_text()))
            if "agent.fence" not in " ".join(fence.cmdline()):
                return False  # an agent that has only just started: no fence of its yet
            fence.kill()
        except (OSError, ValueError, psutil.Error):
            return False
        return True

    def holds_its_name(self, index: int) -> bool:
        """Agent ``index`` has locked its name: it wrote its pid, which it does after the lock
        (an agent only just started has not, and a twin started then would win the name)."""
        pid_file = self.home / "server" / "agents" / f"chaos-{index}" / "agent.pid"
        try:
            return int(pid_file.read_text()) == self.processes[f"chaos-{index}"].pid
        except (OSError, ValueError):
            return False

    def twin_refused(self, index: int) -> bool:
        """Start a second agent under a live agent's name on this host: it must refuse."""
        twin = subprocess.run(
            [AGENT, "start", self.queue_id, "--name", f"chaos-{index}"],
            env=self.env(index),
            capture_output=True,
            text=True,
            timeout=60,
        )
        said = twin.stdout + twin.stderr
        assert twin.returncode != 0 and "is already running on this host" in said, (
            f"a twin of chaos-{index} was not refused: exit {twin.returncode}, {said}"
        )
        return True

    def stop_all(self) -> list[int]:
        for index in list(self.pending):
            del self.pending[index]
            self.start(index)
        # One started a moment ago would die of the SIGTERM before Python has set up anything
        # to handle it: stopping cleanly is tested for agents that are up.
        youngest = max(self.started_at.values(), default=0.0)
        time.sleep(max(0.0, youngest + 5 - time.monotonic()))
        return [stop(p, timeout=90) for p in self.processes.values()]


def executions(marker_dir: Path) -> list[dict[str, Any]]:
    marks = []
    for path in marker_dir.glob("*.json"):
        try:
            marks.append(json.loads(path.read_text()))
        except ValueError:  # pragma: no cover - written atomically
            continue
    return marks


@pytest.fixture
def chaos_home(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path


@pytest.mark.timeout(max(3600, int(RUNS * 0.7) + 600))
@pytest.mark.parametrize("topology", ["sqlite", "replicas"])
def test_chaos(chaos_home: Path, topology: str, request: pytest.FixtureRequest) -> None:
    cluster: PostgresCluster | None = None
    if topology == "replicas":
        cluster = request.getfixturevalue("postgres_cluster")
    with ExitStack() as stack:
        rig = set_up(stack, chaos_home, cluster)
        events, server_kills = unleash(stack, rig)
        seen = collect(rig)
    print(
        f"\nchaos ({topology}): {RUNS} runs, {AGENTS} agents, lease {LEASE:g}s, seed {SEED}\n"
        f"  final states: {dict(seen.states)}\n"
        f"  attempts: {dict(sorted(Counter(r['attempt'] for r in seen.runs.values()).items()))}\n"
        f"  executions recorded: {len(seen.marks)}\n"
        f"  chaos: {dict(events)}, agent kills {len(rig.fleet.kills)}, server kills {server_kills}"
        f", database restarts {rig.database_restarts}\n"
        f"  proxy connections: {sum(p.connections for p in rig.every_proxy)}, "
        f"resets {sum(p.resets for p in rig.every_proxy)}\n"
        f"  agent exit codes at the end: {seen.exit_codes}\n"
        f"  limit samples: {len(rig.sampler.samples)} ({rig.sampler.failed} reads failed), most "
        f"active with tag {TAG} {rig.sampler.most(lambda r: TAG in r['tags'])}/{TAG_LIMIT}, of "
        f"chaos-limited {rig.sampler.most(lambda r: r['deployment_id'] == rig.limited['id'])}"
        f"/{DEPLOYMENT_LIMIT}"
    )
    assert len(seen.runs) == RUNS  # none lost
    if cluster is not None:  # what the replicas variant is for happened
        assert server_kills >= 1 and rig.database_restarts == 1, (
            server_kills,
            rig.database_restarts,
        )
    check_every_run_resolved(seen)
    check_no_limit_exceeded(rig, seen)
    check_no_run_overlaps_itself(seen)
    check_each_attempt_executes_once(seen)
    check_no_run_held_by_a_dead_agent(rig, seen)
    check_output_lines(seen)


# ------------------------------------------------------------------ phase 1: a server, a fleet


@dataclass
class Rig:
    homes: list[Path]  # the servers' (one per replica; the first is the agents' too)
    ports: list[int]
    server_processes: list[subprocess.Popen[bytes]]
    api: Api
    marker_dir: Path
    deployment: dict[str, Any]
    limited: dict[str, Any]  # the deployment limited to DEPLOYMENT_LIMIT at once
    sampler: ActiveSampler
    proxies: list[list[FaultProxy]]  # per agent, one per replica
    fleet: Fleet
    server_env: dict[str, str]
    cluster: PostgresCluster | None  # the replicas' database
    run_ids: list[str] = field(default_factory=list)
    database_restarts: int = 0

    @property
    def every_proxy(self) -> list[FaultProxy]:
        return [proxy for per_agent in self.proxies for proxy in per_agent]


class Api:
    """The API through whichever server replica answers (one may be down, being restarted)."""

    def __init__(self, urls: list[str]) -> None:
        self.clients = [httpx.Client(base_url=url + "/", timeout=30) for url in urls]

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        failure: httpx.HTTPError | None = None
        for client in self.clients:
            try:
                return client.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                failure = exc
        assert failure is not None
        raise failure

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self._send("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self._send("POST", path, **kwargs)

    def close(self) -> None:
        for client in self.clients:
            client.close()


SERVER_ENV = {"AGENT_LEASE_SECONDS": str(LEASE)}


def set_up(stack: ExitStack, chaos_home: Path, cluster: PostgresCluster | None) -> Rig:
    """One server on SQLite, or (``cluster``) two replicas on one PostgreSQL database."""
    marker_dir = chaos_home / "markers"
    marker_dir.mkdir()
    home = chaos_home / "server"
    server_env = dict(SERVER_ENV)
    replicas = 1
    if cluster is not None:
        server_env["AGENT_DATABASE_URL"] = cluster.new_database()
        replicas = 2
    homes = [home, *(chaos_home / f"server-{r}" for r in range(1, replicas))]
    ports = [free_port() for _ in range(replicas)]
    servers = [
        stack.enter_context(running_server(homes[r], server_env, port=ports[r]))
        for r in range(replicas)
    ]
    server = servers[0]
    api = Api([s.url for s in servers])
    stack.callback(api.close)
    queue = api.post("work_queues", json={"name": "chaos"}).json()
    api.post("concurrency_limits", json={"tag": TAG, "limit": TAG_LIMIT}).raise_for_status()
    spec = {
        "work_queue_id": queue["id"],
        "entrypoint": "sample.py:record",
        "working_dir": str(FLOWS),
        "retries": 5,
        "parameters": {"marker_dir": str(marker_dir)},
        "tags": [TAG],
    }
    deployment = api.post("deployments", json={"name": "chaos", **spec}).json()
    limited = api.post(
        "deployments",
        json={"name": "chaos-limited", "concurrency_limit": DEPLOYMENT_LIMIT, **spec},
    ).json()
    sampler = stack.enter_context(ActiveSampler(server.url))
    proxies = [
        [
            stack.enter_context(FaultProxy(port, seed=SEED + i + 100 * r))
            for r, port in enumerate(ports)
        ]
        for i in range(AGENTS)
    ]
    fleet = Fleet(base_env(home), queue["id"], chaos_home, proxies)
    # A failed assertion must not leave agents behind: stop them on the way out, whatever.
    stack.callback(fleet.stop_all)
    for index in range(AGENTS):
        fleet.start(index)
    return Rig(
        homes,
        ports,
        [s.process for s in servers],
        api,
        marker_dir,
        deployment,
        limited,
        sampler,
        proxies,
        fleet,
        server_env,
        cluster,
    )


# ------------------------------------------------------------------ phase 2: everything goes wrong


def unleash(stack: ExitStack, rig: Rig) -> tuple[Counter[str], int]:
    """Submit the runs while faults happen, until every run is resolved; what was done."""
    rng = random.Random(SEED)
    api, fleet, proxies = rig.api, rig.fleet, rig.every_proxy
    victim = rig.proxies[-1]  # the last agent's: cut off from every replica
    # Submitted through most of the chaos, so that every fault meets runs in every phase
    # (claimed, spawning, running, ending, reporting), not an idle fleet.
    bodies = [{"parameters": {"seconds": round(rng.uniform(0.3, 3.0), 2)}} for _ in range(RUNS)]
    run_ids = rig.run_ids

    def submit(began: float, submitted_by: float, stop: threading.Event) -> None:
        """Submit the runs at a steady pace, in a thread of its own: at scale, submitting
        them would otherwise take the chaos loop's time, and the faults would stop."""
        try:
            _submit(began, submitted_by, stop)
        except Exception as exc:  # the chaos loop fails the test with it
            submit_errors.append(repr(exc))

    def _submit(began: float, submitted_by: float, stop: threading.Event) -> None:
        # A client of its own: httpx clients are not shared across threads here.
        client = Api([str(c.base_url).removesuffix("/") for c in api.clients])
        try:
            while len(run_ids) < RUNS and not stop.is_set():
                due = int(RUNS * (time.monotonic() - began) / (submitted_by - began)) + 1
                if len(run_ids) >= due:
                    stop.wait(0.05)
                    continue
                target = rig.limited if len(run_ids) % LIMITED_EVERY == 0 else rig.deployment
                try:
                    response = client.post(
                        f"deployments/{target['id']}/runs", json=bodies[len(run_ids)]
                    )
                except httpx.HTTPError:
                    stop.wait(0.2)  # the server is being restarted
                    continue
                if response.status_code == 503:
                    stop.wait(0.2)  # its database is being restarted
                    continue
                if response.status_code != 201:
                    submit_errors.append(response.text)
                    return
                run_ids.append(response.json()["id"])
        finally:
            client.close()

    def open_runs() -> int:
        try:
            runs = api.get(
                "flow_runs",
                params={"limit": 1000, "state": ["SCHEDULED", "PENDING", "RUNNING", "CANCELLING"]},
            ).json()
        except httpx.HTTPError:
            return -1
        return len(runs) if isinstance(runs, list) else -1

    events: Counter[str] = Counter()
    partitioned_until = 0.0
    began = time.monotonic()
    chaos_until = began + max(60.0, RUNS * 0.1)
    submitted_by = began + (chaos_until - began) * 0.7
    # Resolving takes a loaded 2-core machine up to ~0.5 s a run (the tag limit binds).
    deadline = chaos_until + max(120.0, RUNS * 0.6)
    server_kills = 0

    def kill_server(r: int) -> None:
        """SIGKILL server (replica) ``r`` and start it again on its port: with replicas, the
        agents move to the other one meanwhile."""
        nonlocal server_kills
        rig.server_processes[r].send_signal(signal.SIGKILL)
        rig.server_processes[r].wait()
        server_kills += 1
        time.sleep(0.5)
        rig.server_processes[r] = stack.enter_context(
            running_server(rig.homes[r], rig.server_env, port=rig.ports[r])
        ).process

    # With replicas, whatever the dice say: a replica dies mid-chaos, and later the database
    # under both goes away and comes back.
    forced = (
        {"replica": began + (chaos_until - began) * 0.3}
        | {"database": began + (chaos_until - began) * 0.6}
        if rig.cluster is not None
        else {}
    )
    submit_errors: list[str] = []
    stop_submitting = threading.Event()
    submitter = threading.Thread(
        target=submit, args=(began, submitted_by, stop_submitting), name="submit", daemon=True
    )
    submitter.start()
    stack.callback(submitter.join, 60)
    stack.callback(stop_submitting.set)
    while time.monotonic() < deadline:
        now = time.monotonic()
        fleet.tick()
        assert not submit_errors, f"a run could not be submitted: {submit_errors}"
        if "replica" in forced and now >= forced["replica"]:
            del forced["replica"]
            kill_server(rng.randrange(len(rig.ports)))
            events["replica_killed"] += 1
        if "database" in forced and now >= forced["database"] and rig.cluster is not None:
            del forced["database"]
            rig.cluster.stop("fast")
            time.sleep(rng.uniform(0.5, 2.0))
            rig.cluster.start()
            rig.database_restarts += 1
        # Faults go on until every run is in: submitting is bound by the server (a few runs a
        # second here), and at 10,000 runs it outlasts the planned window by far.
        if now < chaos_until or submitter.is_alive():
            action = rng.choice(ACTIONS)
            # The last agent is the partition victim; the others die in every way.
            index = rng.randrange(AGENTS - 1)
            if action in AGENT_ACTIONS and not fleet.alive(index):
                action = "calm"
            if action == "kill_agent":
                fleet.kill(index)
                time.sleep(rng.uniform(0.1, 1.5))
                fleet.start(index)
            elif action == "kill_at_spawn":
                if fleet.flow_appears(index, timeout=3.0):
                    fleet.kill_for(index, rng.uniform(0.1, 1.0))
                else:
                    action = "calm"
            elif action == "restart_after_fence":
                # The fence fires at half the lease without a renewal; the agent is back
                # (started, its lease renewed) before the lease ends.
                fleet.kill_for(index, rng.uniform(LEASE / 2 + 0.2, LEASE / 2 + 0.8))
            elif action == "restart_after_lease":
                fleet.kill_for(index, rng.uniform(LEASE + 0.5, LEASE + 3))
            elif action == "kill_fence":
                if fleet.kill_fence(index):
                    # Its agent dies before it has started the fence again, or after.
                    time.sleep(rng.uniform(0.0, 2.5))
                    if rng.random() < 0.5:
                        fleet.kill_for(index, rng.uniform(0.1, LEASE + 2))
                else:
                    action = "calm"
            elif action == "twin":
                if fleet.holds_its_name(index):
                    events["twin_refused"] += fleet.twin_refused(index)
                else:
                    action = "calm"
            elif action == "delay":
                proxy = rng.choice(proxies)
                proxy.delay_seconds = rng.uniform(0.05, 0.5)
                with proxy.fault("delay"):
                    time.sleep(1.0)
            elif action == "reset":
                proxy = rng.choice(proxies)
                with proxy.fault("reset"):  # open connections too
                    time.sleep(rng.uniform(0.2, 1.0))
            elif action == "server" and server_kills < 2:
                kill_server(rng.randrange(len(rig.ports)))
            elif action == "partition" and partitioned_until == 0.0:
                for proxy in victim:
                    proxy.set_mode("blackhole")
                partitioned_until = now + LEASE + 3
            events[action] += 1
        if partitioned_until and now > partitioned_until:
            for proxy in victim:
                proxy.set_mode("pass")
            partitioned_until = -1.0
        settled = now >= chaos_until and len(run_ids) == RUNS and not fleet.pending
        if settled and open_runs() == 0:
            break
        time.sleep(0.2)
    for proxy in victim:
        proxy.set_mode("pass")
    return events, server_kills


# ------------------------------------------------------------------ phase 3: what happened


@dataclass
class Seen:
    runs: dict[str, dict[str, Any]]
    histories: dict[str, list[dict[str, Any]]]
    logs: dict[str, list[str]]  # of the COMPLETED runs
    marks: list[dict[str, Any]]  # one per execution, written by the flow
    exit_codes: list[int]

    @property
    def states(self) -> Counter[str]:
        return Counter(run["state"]["type"] for run in self.runs.values())

    def by_run(self) -> dict[str, list[dict[str, Any]]]:
        grouped: dict[str, list[dict[str, Any]]] = {}
        for mark in self.marks:
            grouped.setdefault(mark["run"], []).append(mark)
        return grouped


def collect(rig: Rig) -> Seen:
    exit_codes = rig.fleet.stop_all()
    api = rig.api
    runs = {rid: api.get(f"flow_runs/{rid}").json() for rid in rig.run_ids}
    histories = {rid: api.get(f"flow_runs/{rid}/states").json() for rid in rig.run_ids}
    logs = {
        rid: [
            line["line"]
            for line in api.get(f"flow_runs/{rid}/logs", params={"limit": 10000}).json()
        ]
        for rid, run in runs.items()
        if run["state"]["type"] == "COMPLETED"
    }
    return Seen(runs, histories, logs, executions(rig.marker_dir), exit_codes)


# ------------------------------------------------------------------ phase 4: the promises


def check_every_run_resolved(seen: Seen) -> None:
    """Every run ends in a terminal state, without a person acting; agents stop cleanly.
    Nobody cancels here: a CANCELLED run is one the faults made the fleet give up on (lost)."""
    assert set(seen.states) <= TERMINAL - {"CANCELLED"}, seen.states
    assert seen.exit_codes == [0] * AGENTS, seen.exit_codes


def check_no_limit_exceeded(rig: Rig, seen: Seen) -> None:
    """No limit was ever exceeded, by the server's count (sampled every 50 ms) or by the
    executions themselves (from their markers: start to end, or to last seen alive)."""
    sampler, limited = rig.sampler, rig.limited
    assert len(sampler.samples) > 100
    assert sampler.most(lambda r: TAG in r["tags"]) <= TAG_LIMIT
    assert sampler.most(lambda r: r["deployment_id"] == limited["id"]) <= DEPLOYMENT_LIMIT
    of_limited = {rid for rid, run in seen.runs.items() if run["deployment_id"] == limited["id"]}
    assert _most_overlapping(seen.marks) <= TAG_LIMIT
    marks_of_limited = [m for m in seen.marks if m["run"] in of_limited]
    assert _most_overlapping(marks_of_limited) <= DEPLOYMENT_LIMIT


def check_no_run_overlaps_itself(seen: Seen) -> None:
    """No two executions of one run overlap in time."""
    for run_id, runs_marks in seen.by_run().items():
        spans = sorted((m["start"], m.get("end", m["alive"]), m["pid"]) for m in runs_marks)
        for (_, end, pid), (start, _, other) in itertools.pairwise(spans):
            assert end <= start, f"run {run_id}: executions {pid} and {other} overlapped"


def check_each_attempt_executes_once(seen: Seen) -> None:
    """Each attempt executes at most once (a retried claim or report never starts it again),
    and every COMPLETED run has exactly one finished execution of the attempt that completed.
    An earlier attempt may have finished its work and still been killed before it could exit
    and report (the fence does that when contact is lost): that attempt is CRASHED, retried,
    and counted here as repeated work.

    Work an earlier attempt finished is done again only when the server could not know of it:
    its agent was out of reach (partitioned, or dead and not back) until its lease ran out, and
    the server crashed the attempt for that. A restart within the lease, a fence firing, a
    killed fence, a kill in the spawn window: none may make finished work run again."""
    per_attempt = Counter((m["run"], m["attempt"]) for m in seen.marks)
    twice = {key: n for key, n in per_attempt.items() if n > 1}
    assert not twice, f"attempts executed more than once: {twice}"
    by_run = seen.by_run()
    repeated_work, past_lease, wrongly_repeated = 0, 0, []
    for run_id, run in seen.runs.items():
        if run["state"]["type"] != "COMPLETED":
            continue
        finished = [m for m in by_run.get(run_id, []) if "end" in m]
        final = [m for m in finished if m["attempt"] == run["attempt"]]
        assert len(final) == 1, f"run {run_id}: attempt {run['attempt']} finished {len(final)}x"
        for earlier in finished:
            if earlier is final[0]:
                continue
            repeated_work += 1
            lapsed = f"agent {earlier.get('agent')} stopped heartbeating at"
            if any(lapsed in (state["message"] or "") for state in seen.histories[run_id]):
                past_lease += 1
            else:
                wrongly_repeated.append((run_id, earlier["attempt"], earlier.get("agent")))
    print(
        f"  completed runs whose work an earlier attempt had also finished: {repeated_work} "
        f"({past_lease} after their agent's lease ran out)"
    )
    assert not wrongly_repeated, f"finished work done again: {wrongly_repeated}"


def check_no_run_held_by_a_dead_agent(rig: Rig, seen: Seen) -> None:
    """No run stayed claimed by a dead agent longer than lease + grace."""
    for run_id, history in seen.histories.items():
        for state, after in itertools.pairwise(history):
            if state["type"] != "RUNNING" or not (state["message"] or "").startswith(
                "started by agent "
            ):
                continue
            holder = state["message"].removeprefix("started by agent ")
            began = _ts(state["timestamp"])
            ended = _ts(after["timestamp"])
            for name, killed_at in rig.fleet.kills:
                if name != holder or not began < killed_at < ended:
                    continue
                if any(n == name and killed_at < at < ended for n, at in rig.fleet.starts):
                    continue  # started again meanwhile: its next life answers for the run
                assert ended - killed_at <= LEASE + GRACE, (
                    f"run {run_id} stayed RUNNING {ended - killed_at:.1f}s after {name} died"
                )


def check_output_lines(seen: Seen) -> None:
    """Every COMPLETED run has its execution's output line, unless its agent was SIGKILLed
    while it ran: lines the dead agent had read but not yet sent die with it, and lines in the
    pipe die with the flow if it exits before an agent takes it over ("could not be followed
    again"). Counted, so that the figure is seen."""
    lost_with_agent = 0
    for run_id, lines in seen.logs.items():
        attempt = seen.runs[run_id]["attempt"]
        if f"recording {run_id} attempt {attempt}" in lines:
            continue
        killed = any(
            "restarted and took the run over" in line
            or "this run's output could not be followed again" in line
            for line in lines
        )
        assert killed, f"run {run_id}: lines {lines}"
        lost_with_agent += 1
    print(f"  completed runs whose output line died with a SIGKILLed agent: {lost_with_agent}")


def _most_overlapping(marks: list[dict[str, Any]]) -> int:
    """The most executions running at one moment, from their markers."""
    edges = sorted(
        [(m["start"], 1) for m in marks] + [(m.get("end", m["alive"]), -1) for m in marks],
        key=lambda edge: (edge[0], edge[1]),  # an end before a start at the same instant
    )
    return max(itertools.accumulate(change for _, change in edges), default=0)


def _ts(value: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
