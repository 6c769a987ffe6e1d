"""Bundles live in the server's database: every replica on one PostgreSQL serves every bundle,
concurrent uploads of the same bytes store it once, large ones are chunked, bundles an older
version left on disk are imported at start, and the leader deletes those nothing needs."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from agent.sources.bundle import pack
from tests.gitrepos import FLOW
from tests.replicas import client, replicas
from tests.support import (
    Server,
    cli,
    make_queue,
    make_run,
    running_server,
    start_agent,
    stop,
    wait_for,
    wait_state,
)

pytestmark = pytest.mark.integration

MIB = 1 << 20


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def bundle(tmp_path: Path, random_bytes: int = 0) -> bytes:
    """A real bundle (the CLI's packing) of a flow directory, unique to this call."""
    directory = tmp_path / f"flows-{uuid.uuid4().hex[:8]}"
    directory.mkdir()
    (directory / "hello.py").write_text(FLOW)
    (directory / "VERSION").write_text(f"v-{uuid.uuid4().hex}\n")
    if random_bytes:
        (directory / "data.bin").write_bytes(os.urandom(random_bytes))  # gzip cannot shrink it
    return pack(directory)


def upload(api: httpx.Client, data: bytes) -> httpx.Response:
    return api.post("bundles", content=data, headers={"Content-Type": "application/gzip"})


def sqlite_rows(server: Server, query: str, *args: Any) -> list[Any]:
    with sqlite3.connect(server.home / "flowagent.db") as db:
        return list(db.execute(query, args))


def postgres_rows(url: str, query: str, *args: Any) -> list[Any]:
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as db:
        return list(db.execute(query, args).fetchall())


# --------------------------------------------------------------------------- replicas


def test_a_bundle_uploaded_through_one_replica_is_served_and_run_through_another(
    tmp_path: Path, postgres_url: str
) -> None:
    with replicas(tmp_path, postgres_url) as (a, b), client(a) as api_a, client(b) as api_b:
        queue = make_queue(api_a)
        flows = tmp_path / "flows"
        flows.mkdir()
        (flows / "hello.py").write_text(FLOW)
        (flows / "VERSION").write_text("v-replicas\n")
        made = cli(
            a,
            "deployment",
            "create",
            "hello.py:main",
            "--name",
            f"r-{uuid.uuid4().hex[:8]}",
            "--queue",
            queue["name"],
            "--upload",
            str(flows),
        )
        deployment = json.loads(cli(b, "deployment", "inspect", made.stdout.strip()).stdout)
        digest = deployment["source"]["bundle"]

        downloaded = api_b.get(f"bundles/{digest}")
        assert downloaded.status_code == 200, downloaded.text
        assert downloaded.content == pack(flows)
        assert digest_of(downloaded.content) == digest
        assert downloaded.headers["content-length"] == str(len(downloaded.content))
        # B accepts a deployment naming it: the bundle is B's too.
        again = api_b.post(
            "deployments",
            json={
                "name": deployment["name"],
                "work_queue_id": queue["id"],
                "entrypoint": "hello.py:main",
                "source": {"bundle": digest},
            },
        )
        assert again.status_code == 200, again.text

        # An agent that knows only replica B downloads the code B never received.
        home = tmp_path / "agent-host"
        home.mkdir()
        agent = start_agent(b, queue["id"], log_path=home / "agent.log", AGENT_HOME=str(home))
        try:
            out = tmp_path / "out"
            run = make_run(api_b, deployment, parameters={"out": str(out)})
            done = wait_state(api_b, run["id"], timeout=60)
        finally:
            assert stop(agent) == 0
        assert done["state"]["type"] == "COMPLETED", done["state"]
        assert done["source"]["bundle"] == digest
        assert Path(f"{out}-1").read_text().splitlines()[0] == "v-replicas"
        assert not (a.home / "bundles").exists() and not (b.home / "bundles").exists()


def concurrent_uploads(urls: list[str], data: bytes) -> list[httpx.Response]:
    """Upload ``data`` through every URL at once (one thread each, released together)."""
    start = threading.Barrier(len(urls))
    answers: list[httpx.Response | None] = [None] * len(urls)

    def send(index: int) -> None:
        with httpx.Client(base_url=urls[index] + "/", timeout=60) as api:
            start.wait()
            answers[index] = upload(api, data)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(urls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert all(answer is not None for answer in answers)
    return [answer for answer in answers if answer is not None]


def test_the_same_bytes_uploaded_at_once_through_two_replicas_are_stored_once(
    tmp_path: Path, postgres_url: str
) -> None:
    with replicas(tmp_path, postgres_url) as (a, b):
        for _ in range(4):  # new bytes each round: the race is decided again each time
            data = bundle(tmp_path, random_bytes=3 * MIB)
            answers = concurrent_uploads([a.url, b.url, a.url, b.url], data)
            assert [r.status_code for r in answers] == [201] * 4, [r.text for r in answers]
            assert sorted(r.json()["created"] for r in answers) == [False, False, False, True]
            assert {r.json()["digest"] for r in answers} == {digest_of(data)}
            rows = postgres_rows(
                postgres_url,
                "SELECT count(*), sum(length(data)) FROM bundle_chunks WHERE digest = %s",
                digest_of(data),
            )
            assert rows == [(-(-len(data) // MIB), len(data))]
        assert postgres_rows(postgres_url, "SELECT count(*) FROM bundles") == [(4,)]
        assert "Traceback" not in a.log() + b.log()


# --------------------------------------------------------------------------- one server


def test_a_large_bundle_round_trips_exactly_in_chunks(tmp_path: Path) -> None:
    data = bundle(tmp_path, random_bytes=5 * MIB)
    with running_server(tmp_path / "server") as server, server.client() as api:
        first = upload(api, data)
        assert first.status_code == 201 and first.json()["created"] is True, first.text
        answers = concurrent_uploads([server.url] * 3, data)  # SQLite: one writer, same answer
        assert [r.json()["created"] for r in answers] == [False] * 3
        with api.stream("GET", f"bundles/{digest_of(data)}") as response:
            assert response.headers["content-length"] == str(len(data))
            assert response.headers["content-type"] == "application/gzip"
            got = b"".join(response.iter_bytes())
        chunks = sqlite_rows(server, "SELECT seq, length(data) FROM bundle_chunks ORDER BY seq")
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    assert [seq for seq, _ in chunks] == list(range(6))  # 5 MiB and the flow: six chunks
    assert [size for _, size in chunks[:-1]] == [MIB] * 5
    assert sum(size for _, size in chunks) == len(data)


def test_bundles_an_older_server_kept_on_disk_are_imported_at_start(tmp_path: Path) -> None:
    home = tmp_path / "server"
    old = home / "bundles"
    old.mkdir(parents=True)
    data = bundle(tmp_path)
    kept = old / f"{digest_of(data).removeprefix('sha256:')}.tar.gz"
    kept.write_bytes(data)
    damaged = old / f"{'ab' * 32}.tar.gz"  # its content is not what its name says
    damaged.write_bytes(bundle(tmp_path))

    with running_server(home) as server, server.client() as api:
        got = api.get(f"bundles/{digest_of(data)}")
        assert got.status_code == 200 and got.content == data
        assert api.get(f"bundles/sha256:{'ab' * 32}").status_code == 404
        queue = make_queue(api)
        deployment = api.post(
            "deployments",
            json={
                "name": f"old-{uuid.uuid4().hex[:8]}",
                "work_queue_id": queue["id"],
                "entrypoint": "hello.py:main",
                "source": {"bundle": digest_of(data)},
            },
        )
        assert deployment.status_code == 201, deployment.text
    assert not kept.exists()  # in the database now
    assert damaged.exists()  # never imported, never deleted: someone should look at it
    log = server.log()
    assert "bundle_imported" in log and "bundle_import_skipped" in log and "damaged" in log

    with running_server(home) as again, again.client() as api:  # nothing to import twice
        assert api.get(f"bundles/{digest_of(data)}").content == data
        assert sqlite_rows(again, "SELECT count(*) FROM bundles") == [(1,)]


def test_the_server_deletes_bundles_nothing_names_after_the_retention(tmp_path: Path) -> None:
    retention = 4.0  # the server collects every second (a tenth of it, at least 1 s)
    env = {"AGENT_BUNDLE_RETENTION": str(retention)}
    with running_server(tmp_path / "server", env) as server, server.client() as api:
        queue = make_queue(api)
        named, loose, of_run, deleted = (upload(api, bundle(tmp_path)).json() for _ in range(4))
        uploaded = time.monotonic()

        def deploy(digest: str) -> dict[str, Any]:
            body = {
                "name": f"gc-{uuid.uuid4().hex[:8]}",
                "work_queue_id": queue["id"],
                "entrypoint": "hello.py:main",
                "source": {"bundle": digest},
            }
            response = api.post("deployments", json=body)
            assert response.status_code in (200, 201), response.text
            return dict(response.json())

        def present(item: dict[str, Any]) -> bool:
            # The status line only: a download the collector deletes under it is cut short
            # (its Content-Length says so), which reading the body would raise on.
            with api.stream("GET", f"bundles/{item['digest']}") as response:
                return response.status_code == 200

        deploy(named["digest"])
        # A run started from a deployment since changed to another bundle: only the run
        # (unfinished) names this one now.
        moved = deploy(of_run["digest"])
        run = make_run(api, moved)
        agent = api.agent(queue)
        (claimed,) = api.claim(queue, agent)
        assert claimed["flow_run"]["id"] == run["id"]
        started = api.post(
            f"flow_runs/{run['id']}/set_state",
            json={
                "type": "RUNNING",
                "agent_id": agent["id"],
                "source": {"bundle": of_run["digest"]},
            },
        )
        assert started.status_code == 200, started.text
        deploy_again = {**moved, "source": {"bundle": named["digest"]}}
        assert api.post("deployments", json=_create_body(deploy_again)).status_code == 200
        # A deployment deleted: its bundle stays for the retention (a run may not have
        # fetched it yet), then goes.
        gone_later = deploy(deleted["digest"])
        assert api.delete(f"deployments/{gone_later['id']}").status_code == 204
        assert present(deleted)

        wait_for(
            lambda: not present(loose) and not present(deleted),
            timeout=retention + 15,
            what="the unused bundles to be deleted",
        )
        assert time.monotonic() - uploaded >= retention
        assert present(named) and present(of_run)

        # Once the run is over, nothing names its bundle: it goes too.
        done = api.post(
            f"flow_runs/{run['id']}/set_state", json={"type": "COMPLETED", "agent_id": agent["id"]}
        )
        assert done.status_code == 200, done.text
        wait_for(lambda: not present(of_run), timeout=15, what="the finished run's bundle to go")
        assert present(named)
        assert sqlite_rows(
            server, "SELECT count(*) FROM bundle_chunks WHERE digest != ?", named["digest"]
        ) == [(0,)]
    assert "bundle_deleted" in server.log()


def _create_body(deployment: dict[str, Any]) -> dict[str, Any]:
    keys = ("name", "work_queue_id", "entrypoint", "source")
    return {key: deployment[key] for key in keys}


def test_with_replicas_only_the_leader_deletes_unused_bundles(
    tmp_path: Path, postgres_url: str
) -> None:
    env = {"AGENT_BUNDLE_RETENTION": "2"}
    with (
        replicas(tmp_path, postgres_url, extra_env=env) as (a, b),
        client(a) as api_a,
        client(b) as api_b,
    ):
        loose = upload(api_b, bundle(tmp_path)).json()["digest"]
        wait_for(
            lambda: api_a.get(f"bundles/{loose}").status_code == 404,
            timeout=20,
            what="the leader to delete the unused bundle",
        )
        logs = [server.log() for server in (a, b)]
    (deleter,) = [log for log in logs if "bundle_deleted" in log]
    assert "leadership_acquired" in deleter
    assert postgres_rows(postgres_url, "SELECT count(*) FROM bundle_chunks") == [(0,)]
