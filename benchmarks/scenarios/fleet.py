"""(11) A fleet: many simulated agents on SQLite (one server) and PostgreSQL (one and two
replicas), in the same run.

A simulated agent is a few asyncio tasks with their own HTTP client, not a process: it registers,
heartbeats every ``fleet_heartbeat_seconds`` and long-polls claims (10 s, one run at a time) as
a real agent does, and reports RUNNING then COMPLETED for what it claims, without running
anything. The agents are spread over the setup's replicas in turn.

- **heartbeats**: for each fleet size, the heartbeat round trip (p99 target 250 ms) while every
  agent sits in its long poll, and whether any agent went longer than its lease between two
  accepted heartbeats (a lost lease);
- **throughput**: runs per second from 1,000 queued runs to the last COMPLETED report, claimed
  by ``fleet_workers`` agents;
- **pickup across replicas**: a run created through the first replica, claimed by an agent
  long-polling on the last (on one server, the same one): creation to claim answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.synchronize import Barrier
from typing import Any

import aiohttp
import httpx

from benchmarks.api import NativeApi
from benchmarks.core import Context, Section, Sizes, ms
from benchmarks.stats import Figure, Target

LEASE_SECONDS = 30.0
# The longest a drain may take before the section says it failed, rather than hang.
DRAIN_DEADLINE = 600.0
# Agents registering at once: a thousand new connections in the same instant overflow the
# server's accept queue, and the SYN retries (1 s, 3 s, 7 s) would be measured as the server.
REGISTER_AT_ONCE = 50
REGISTER_DEADLINE = 300.0
CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=60)
# What a simulated agent's request may fail with: the server's silence or a transport error.
CLIENT_ERRORS = (aiohttp.ClientError, TimeoutError)


@dataclass
class Tally:
    """What the simulated agents saw."""

    heartbeat_ms: list[float] = field(default_factory=list)
    heartbeat_errors: int = 0
    # What the failed beats were: an HTTP status, or the transport error's name.
    heartbeat_failures: Counter[str] = field(default_factory=Counter)
    lost_leases: int = 0
    completed: int = 0
    claim_errors: int = 0

    def add(self, other: Tally) -> None:
        self.heartbeat_ms += other.heartbeat_ms
        self.heartbeat_errors += other.heartbeat_errors
        self.heartbeat_failures += other.heartbeat_failures
        self.lost_leases += other.lost_leases
        self.completed += other.completed
        self.claim_errors += other.claim_errors


class Fleet:
    """Simulated agents on one queue, spread over ``urls``."""

    def __init__(
        self, urls: list[str], queue_id: str, heartbeat_seconds: float, claim_wait: float
    ) -> None:
        self.urls = urls
        self.queue_id = queue_id
        self.heartbeat_seconds = heartbeat_seconds
        self.claim_wait = claim_wait
        self.tally = Tally()
        self.stopping = asyncio.Event()
        self.done = asyncio.Event()  # set when ``target`` runs are COMPLETED
        self.target = 0
        self.size = 0  # agents started
        self.registered = 0
        self.registered_here = asyncio.Event()
        self.polling = 0  # agents whose long polls have begun
        self.polling_here = asyncio.Event()
        # Set once every agent is registered and polling: the heartbeats measured are those
        # after it.
        self.all_registered = asyncio.Event()
        self._joining = asyncio.Semaphore(REGISTER_AT_ONCE)

    def start(
        self, indices: range, *, claiming: bool, staggered: bool = False
    ) -> list[asyncio.Task[None]]:
        """Agents ``indices`` of the fleet (their place spreads them over URLs and beats, and,
        ``staggered``, their long polls over the claim wait)."""
        self.size = len(indices)
        return [
            asyncio.create_task(self.agent(i, claiming=claiming, staggered=staggered))
            for i in indices
        ]

    async def registration(self, everyone: Callable[[], object] | None = None) -> None:
        """Return once every agent started is registered and has begun its long polls (or
        fail, rather than wait forever), and ``everyone`` (the other processes' agents)
        returns; the heartbeats measured are those after it."""
        try:
            await asyncio.wait_for(self.registered_here.wait(), REGISTER_DEADLINE)
            await asyncio.wait_for(self.polling_here.wait(), self.claim_wait + REGISTER_DEADLINE)
        except TimeoutError:
            raise RuntimeError(
                f"{self.registered} of {self.size} agents registered and {self.polling} polling "
                f"after {REGISTER_DEADLINE:g} s"
            ) from None
        if everyone is not None:
            await asyncio.to_thread(everyone)
        self.all_registered.set()

    async def agent(self, index: int, *, claiming: bool, staggered: bool) -> None:
        base = self.urls[index % len(self.urls)]
        # What a real agent's beat carries (agent/heartbeat.py), its runs' list included.
        beat: dict[str, Any] = {
            "name": f"fleet-{uuid.uuid4().hex[:10]}",
            "work_queue_id": self.queue_id,
            "tags": [],
            "hostname": f"fleet-host-{index}",
            "pid": os.getpid(),
            "version": "fleet",
            "runs_in_flight": 0,
            "heartbeat_interval_seconds": self.heartbeat_seconds,
            "metrics": {"cpu_percent": 12.5, "memory_percent": 40.0, "load_1m": 0.4},
        }
        held: set[str] = set()
        # A client of its own, as a real agent has. aiohttp, not httpx as real agents use:
        # the fleet's clients share one process on the server's two cores, and httpx spent
        # about seven times the CPU, taken from the server and added to every round trip
        # measured (docs/PERFORMANCE.md, "The load generator's share, the garbage collector,
        # and a convoy").
        async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as http:
            async with self._joining:
                status, answer = await self._send(http, f"{base}/agents/heartbeat", beat)
            if status != 200:  # a 4xx registration is the benchmark's own mistake
                raise RuntimeError(f"registration refused: HTTP {status} {answer}")
            agent_id = answer["id"]
            beat["run_ids"] = held  # sent as a list: see _heartbeats
            self.registered += 1
            if self.registered == self.size:
                self.registered_here.set()
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._heartbeats(http, base, beat, index))
                if claiming:
                    # Agents started at random hold their polls out of step, as their beats.
                    phase = (index % 89) / 89 if staggered else 0.0
                    tasks.create_task(self._claims(http, base, agent_id, held, phase))

    async def _heartbeats(
        self, http: aiohttp.ClientSession, base: str, beat: dict[str, Any], index: int
    ) -> None:
        # Spread the fleet's heartbeats over the interval, as agents started at random would.
        await asyncio.sleep(self.heartbeat_seconds * (index % 97) / 97)
        last_ok = time.monotonic()
        while not self.stopping.is_set():
            began = time.monotonic()
            failure = None
            try:
                body = beat | {
                    "run_ids": sorted(beat["run_ids"]),
                    "runs_in_flight": len(beat["run_ids"]),
                }
                async with http.post(f"{base}/agents/heartbeat", json=body) as response:
                    await response.read()
                if response.status != 200:
                    failure = f"HTTP {response.status}"
            except CLIENT_ERRORS as exc:
                failure = type(exc).__name__
            ok = failure is None
            answered = time.monotonic()
            if ok:
                if self.all_registered.is_set():
                    self.tally.heartbeat_ms.append(ms(answered - began))
                if answered - last_ok > LEASE_SECONDS:
                    self.tally.lost_leases += 1
                last_ok = answered
            else:
                self.tally.heartbeat_errors += 1
                self.tally.heartbeat_failures[failure or "?"] += 1
            with contextlib.suppress(TimeoutError):
                wait = max(0.0, self.heartbeat_seconds - (answered - began))
                await asyncio.wait_for(self.stopping.wait(), wait)

    async def _claims(
        self, http: aiohttp.ClientSession, base: str, agent_id: str, held: set[str], phase: float
    ) -> None:
        claim_url = f"{base}/work_queues/{self.queue_id}/claim"
        await asyncio.sleep(self.claim_wait * phase)
        self.polling += 1
        if self.polling == self.size:
            self.polling_here.set()
        while not self.stopping.is_set():
            body = {"agent_id": agent_id, "limit": 1, "wait_seconds": self.claim_wait}
            body["claim_id"] = str(uuid.uuid4())
            try:
                async with http.post(claim_url, json=body) as response:
                    claimed = await response.json() if response.status == 200 else None
                if claimed is None:
                    self.tally.claim_errors += 1
                    await asyncio.sleep(0.1)
                    continue
                for run in claimed:
                    run_id = run["flow_run"]["id"]
                    held.add(run_id)
                    for state in ("RUNNING", "COMPLETED"):
                        url = f"{base}/flow_runs/{run_id}/set_state"
                        await self._send(http, url, {"type": state})
                    held.discard(run_id)
                    self.tally.completed += 1
                    if self.tally.completed >= self.target:
                        self.done.set()
            except CLIENT_ERRORS:
                self.tally.claim_errors += 1
                await asyncio.sleep(0.1)

    async def _send(
        self, http: aiohttp.ClientSession, url: str, body: dict[str, Any]
    ) -> tuple[int, Any]:
        """The status and JSON answer of a POST; a busy server's 503 or silence is sent again,
        as an agent would (a report given up would leave its run RUNNING and the drain
        waiting for it)."""
        for _ in range(100):
            with contextlib.suppress(*CLIENT_ERRORS):
                async with http.post(url, json=body) as answer:
                    if answer.status < 500:
                        return answer.status, await answer.json(content_type=None)
            await asyncio.sleep(0.1)
        raise RuntimeError(f"{url}: {body} not accepted after 100 tries")

    async def stop(self, agents: list[asyncio.Task[None]]) -> None:
        """Let ``agents`` finish their long polls, then end them."""
        self.stopping.set()
        await asyncio.wait(agents, timeout=self.claim_wait + 30)
        for task in agents:
            task.cancel()
        await asyncio.gather(*agents, return_exceptions=True)


def _hold(urls: list[str], queue_id: str, n: int, sizes: Sizes) -> Tally:
    """``n`` agents heartbeating and long-polling (nothing to claim) for the hold, simulated by
    ``fleet_processes`` processes.

    One process's event loop running a thousand agents' HTTP clients is itself busy most of
    the time: a round trip then waits for the client as well as for the server.
    """
    processes = max(1, min(sizes.fleet_processes, n))
    if processes == 1:
        return _hold_part(urls, queue_id, range(n), sizes, None)
    context = multiprocessing.get_context("spawn")
    registered = context.Barrier(processes)
    results: multiprocessing.Queue[Tally | BaseException] = context.Queue()
    workers = [
        context.Process(
            target=_hold_process,
            args=(urls, queue_id, range(k, n, processes), sizes, registered, results),
            daemon=True,
        )
        for k in range(processes)
    ]
    for worker in workers:
        worker.start()
    tally = Tally()
    try:
        for _ in workers:
            part = results.get(timeout=REGISTER_DEADLINE + sizes.fleet_hold_seconds + 120)
            if isinstance(part, BaseException):
                raise RuntimeError(f"a fleet process failed: {part!r}") from part
            tally.add(part)
    finally:
        for worker in workers:
            worker.join(10)
            if worker.is_alive():
                worker.kill()
    return tally


def _hold_process(
    urls: list[str],
    queue_id: str,
    indices: range,
    sizes: Sizes,
    registered: Barrier,
    results: multiprocessing.Queue[Tally | BaseException],
) -> None:
    try:
        results.put(_hold_part(urls, queue_id, indices, sizes, registered))
    except BaseException as exc:  # the parent says which process failed and how
        registered.abort()
        results.put(exc)


def _hold_part(
    urls: list[str], queue_id: str, indices: range, sizes: Sizes, registered: Barrier | None
) -> Tally:
    """One process's share of the hold; the hold starts when every process has registered."""

    async def hold() -> Tally:
        fleet = Fleet(urls, queue_id, sizes.fleet_heartbeat_seconds, sizes.fleet_claim_wait)
        agents = fleet.start(indices, claiming=True, staggered=True)
        try:
            await fleet.registration(
                None if registered is None else lambda: registered.wait(REGISTER_DEADLINE)
            )
            await asyncio.sleep(sizes.fleet_hold_seconds)
        finally:
            await fleet.stop(agents)
        return fleet.tally

    return asyncio.run(hold())


async def _drain(urls: list[str], queue_id: str, sizes: Sizes) -> float:
    """Seconds for ``fleet_workers`` agents to take ``fleet_runs`` queued runs to COMPLETED."""
    fleet = Fleet(urls, queue_id, sizes.fleet_heartbeat_seconds, sizes.fleet_claim_wait)
    runs = fleet.target = sizes.fleet_runs
    began = time.monotonic()
    agents = fleet.start(range(sizes.fleet_workers), claiming=True)
    try:
        await asyncio.wait_for(fleet.done.wait(), DRAIN_DEADLINE)
        return time.monotonic() - began
    except TimeoutError:
        raise RuntimeError(
            f"{fleet.tally.completed} of {runs} runs COMPLETED after {DRAIN_DEADLINE:g} s "
            f"({fleet.tally.claim_errors} claim errors)"
        ) from None
    finally:
        await fleet.stop(agents)


def _pickups(
    apis: list[NativeApi], deployment_id: str, queue_id: str, n: int, claim_wait: float
) -> list[float]:
    """Created through the first replica, claimed by a long poll held on the last."""
    first, last = apis[0], apis[-1]
    beat = {"name": f"pick-{uuid.uuid4().hex[:8]}", "work_queue_id": queue_id}
    agent = last.call("POST", "agents/heartbeat", json=beat)
    claim_url = f"{last.url}/work_queues/{queue_id}/claim"
    body = {"agent_id": agent["id"], "wait_seconds": claim_wait}
    samples: list[float] = []

    def held_claim(http: httpx.Client) -> float:
        http.post(claim_url, json=body)
        return time.monotonic()

    with httpx.Client(timeout=60) as http, ThreadPoolExecutor(1) as pool:
        for _ in range(n):
            answered = pool.submit(held_claim, http)
            time.sleep(0.3)  # the claim is held
            created = time.monotonic()
            first.call("POST", f"deployments/{deployment_id}/runs", json={})
            samples.append(ms(answered.result() - created))
    return samples


@contextlib.contextmanager
def _setup(
    ctx: Context, label: str, replicas: int, database_url: str | None
) -> Iterator[list[str]]:
    env = {"AGENT_DATABASE_URL": database_url} if database_url else {}
    with contextlib.ExitStack() as stack:
        urls = [
            stack.enter_context(ctx.lab.native_server(f"fleet-{label}-{i}", env)).url
            for i in range(replicas)
        ]
        yield urls


def _measure(ctx: Context, section: Section, label: str, urls: list[str]) -> None:
    sizes = ctx.sizes
    apis = [NativeApi(url) for url in urls]
    try:
        for n in (int(size) for size in sizes.fleet_agents.split(",")):
            queue = apis[0].queue()
            ctx.say(f"fleet {label}: {n} agents for {sizes.fleet_hold_seconds:g} s")
            tally = _hold(urls, queue["id"], n, sizes)
            section.add(
                Figure.distribution(
                    "fleet",
                    f"{label}: heartbeat round trip, {n} agents",
                    "ms",
                    tally.heartbeat_ms,
                    [Target("p99", "<=", 250)],
                    note=f"{_failed(tally)}, {tally.lost_leases} leases lost",
                )
            )
            section.details[f"{label}/{n}"] = {
                "heartbeat_errors": tally.heartbeat_errors,
                "heartbeat_failures": dict(tally.heartbeat_failures),
                "lost_leases": tally.lost_leases,
                "claim_errors": tally.claim_errors,
            }
        queue = apis[0].queue()
        deployment = apis[0].deployment(queue["id"], command=["true"])
        runs = sizes.fleet_runs
        asyncio.run(_create(urls, deployment, runs))
        ctx.say(f"fleet {label}: {runs} queued runs, {sizes.fleet_workers} agents")
        seconds = asyncio.run(_drain(urls, queue["id"], sizes))
        section.add(
            Figure.scalar(
                "fleet", f"{label}: claim → RUNNING → COMPLETED", "runs/s", runs / seconds, n=runs
            )
        )
        picked = _pickups(
            apis, deployment, queue["id"], sizes.fleet_pickups, sizes.fleet_claim_wait
        )
        where = "created on one replica, claimed on the other" if len(urls) > 1 else "one server"
        section.add(
            Figure.distribution(
                "fleet", f"{label}: pickup, {where}", "ms", picked, [Target("p50", "<=", 50)]
            )
        )
    finally:
        for api in apis:
            api.close()


def _failed(tally: Tally) -> str:
    kinds = ", ".join(f"{n} {kind}" for kind, n in tally.heartbeat_failures.most_common())
    return f"{tally.heartbeat_errors} failed" + (f" ({kinds})" if kinds else "")


async def _create(urls: list[str], deployment_id: str, runs: int) -> None:
    async with httpx.AsyncClient(timeout=60) as http:
        semaphore = asyncio.Semaphore(16)

        async def one(i: int) -> None:
            async with semaphore:
                while True:
                    url = f"{urls[i % len(urls)]}/deployments/{deployment_id}/runs"
                    if (await http.post(url, json={})).status_code == 201:
                        return
                    await asyncio.sleep(0.1)

        await asyncio.gather(*(one(i) for i in range(runs)))


def run(ctx: Context, sections: dict[str, Section]) -> None:
    section = sections["fleet"]
    with ctx.lab.native_server("fleet-sqlite") as server:
        _measure(ctx, section, "SQLite, 1 server", [server.url])
    from tests.postgres import make_cluster, postgres_problem

    problem = postgres_problem()
    if problem is not None:
        if os.environ.get("CI"):
            raise RuntimeError(f"CI needs PostgreSQL for the fleet section, and {problem}")
        section.details["postgres_skipped"] = problem
        ctx.say(f"fleet: PostgreSQL setups skipped: {problem}")
        return
    cluster = make_cluster()
    try:
        for replicas in (1, 2):
            label = f"PostgreSQL, {replicas} replica{'s' if replicas > 1 else ''}"
            with _setup(ctx, f"pg{replicas}", replicas, cluster.new_database()) as urls:
                _measure(ctx, section, label, urls)
    finally:
        cluster.stop("immediate")
        shutil.rmtree(cluster.directory, ignore_errors=True)
