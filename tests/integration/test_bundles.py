"""Uploaded bundles: packed by the real CLI, stored by a real server, run by real agents."""

from __future__ import annotations

import hashlib
import io
import json
import os
import sqlite3
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.gitrepos import FLOW
from tests.support import (
    AGENT,
    Server,
    cli,
    get_run,
    make_queue,
    make_run,
    running_server,
    server_fixture,
    start_agent,
    stop,
    wait_state,
)

pytestmark = pytest.mark.integration


server = server_fixture("bundles")


@pytest.fixture
def flows(tmp_path: Path) -> Path:
    """The directory to upload: the flow, its data, and what .flowagentignore leaves out."""
    directory = tmp_path / "flows"
    directory.mkdir()
    (directory / "hello.py").write_text(FLOW)
    (directory / "VERSION").write_text("v1\n")
    (directory / "notes.log").write_text("left out\n")
    (directory / "build").mkdir()
    (directory / "build" / "big.bin").write_bytes(b"x" * 1000)
    (directory / "current").symlink_to("VERSION")  # inside: kept as a link
    (directory / ".flowagentignore").write_text("*.log\nbuild/\n")
    return directory


@pytest.fixture
def agent_home(server: Server, tmp_path: Path) -> Iterator[Path]:
    """A host of its own (no path shared with the uploader) with one agent on a fresh queue."""
    home = tmp_path / "agent-host"
    home.mkdir()
    yield home


def start(server: Server, queue: dict[str, Any], home: Path) -> subprocess.Popen[bytes]:
    return start_agent(
        server,
        queue["id"],
        "--name",
        f"b-{time.monotonic_ns()}",
        log_path=home / "agent.log",
        AGENT_HOME=str(home),
    )


def create(server: Server, queue: dict[str, Any], directory: Path, *extra: str) -> Any:
    result = cli(
        server,
        "deployment",
        "create",
        "hello.py:main",
        "--name",
        f"u-{time.monotonic_ns()}",
        "--queue",
        queue["name"],
        "--upload",
        str(directory),
        *extra,
        check=False,
    )
    return result


def stored(server: Server) -> list[str]:
    """The digests the server's database holds (SQLite in its home)."""
    with sqlite3.connect(server.home / "flowagent.db") as db:
        return [row[0] for row in db.execute("SELECT digest FROM bundles ORDER BY digest")]


def test_an_uploaded_directory_runs_on_an_agent_without_it(
    api, server, flows, agent_home, tmp_path
) -> None:
    queue = make_queue(api)
    made = create(server, queue, flows)
    assert made.returncode == 0, made.stderr
    deployment = json.loads(cli(server, "deployment", "inspect", made.stdout.strip()).stdout)
    digest = deployment["source"]["bundle"]
    out = tmp_path / "out"
    out.mkdir()
    agent = start(server, queue, agent_home)
    try:
        target = str(out / uuid.uuid4().hex)
        run = make_run(api, deployment, parameters={"out": target})
        done = wait_state(api, run["id"])
    finally:
        assert stop(agent) == 0

    assert done["state"]["type"] == "COMPLETED", done["state"]
    assert done["source"] == {
        "bundle": digest,
        "git": None,
        "ref": None,
        "commit": None,
        "path": None,
    }
    version, where, _ = Path(f"{target}-1").read_text().splitlines()
    assert version == "v1"
    assert where.startswith(str(agent_home)) and not Path(where).exists()
    assert list(agent_home.glob("agents/*/checkouts/*")) == []
    assert digest in stored(server)
    archive = api.get(f"bundles/{digest}")
    assert archive.headers["content-length"] == str(len(archive.content))
    assert "sha256:" + hashlib.sha256(archive.content).hexdigest() == digest
    with tarfile.open(fileobj=io.BytesIO(archive.content)) as tar:
        names = set(tar.getnames())
        assert tar.getmember("current").issym()
    assert names == {"hello.py", "VERSION", "current", ".flowagentignore"}


def test_the_same_content_is_stored_once_and_a_change_makes_a_new_digest(
    api, server, flows
) -> None:
    queue = make_queue(api)
    before = set(stored(server))
    first = create(server, queue, flows)
    again = create(server, queue, flows)
    (flows / "notes.log").write_text("ignored, so no change\n")
    ignored_change = create(server, queue, flows)
    assert "already on the server" in again.stderr and "already" in ignored_change.stderr
    assert len(set(stored(server)) - before) <= 1
    (flows / "VERSION").write_text("v2\n")
    changed = create(server, queue, flows)

    digests = [
        json.loads(cli(server, "deployment", "inspect", r.stdout.strip()).stdout)["source"]
        for r in (first, again, ignored_change, changed)
    ]
    assert digests[0] == digests[1] == digests[2] != digests[3]
    assert "uploaded" in changed.stderr


def test_a_symlink_out_of_the_directory_is_refused(api, server, flows) -> None:
    (flows / "passwd").symlink_to("/etc/passwd")
    queue = make_queue(api)
    before = stored(server)

    result = create(server, queue, flows)

    assert result.returncode != 0
    assert "passwd is a symbolic link to /etc/passwd" in result.stderr
    assert ".flowagentignore" in result.stderr
    assert stored(server) == before


def test_an_oversized_bundle_is_refused_by_the_server(flows, tmp_path) -> None:
    (flows / "data.bin").write_bytes(os.urandom(64 * 1024))  # random: gzip cannot shrink it
    with running_server(tmp_path / "small", {"AGENT_BUNDLE_MAX_SIZE": "8K"}) as small:
        with small.client() as api:
            queue = make_queue(api)
            result = create(small, queue, flows)
            assert api.get("deployments").json() == []
        assert result.returncode != 0
        assert "larger than this server takes (8,192 bytes" in result.stderr
        assert ".flowagentignore" in result.stderr
        assert stored(small) == []
        # Nor is anything of the refused body left on its disk.
        left = [p.name for p in small.home.iterdir() if not p.name.startswith("flowagent.db")]
        assert left == ["server.log"]


def test_a_tampered_cached_bundle_is_detected_and_downloaded_again(
    api, server, flows, agent_home, tmp_path
) -> None:
    queue = make_queue(api)
    made = create(server, queue, flows)
    deployment = json.loads(cli(server, "deployment", "inspect", made.stdout.strip()).stdout)
    digest = deployment["source"]["bundle"]
    out = tmp_path / "out"
    out.mkdir()
    agent = start(server, queue, agent_home)
    try:
        first = make_run(api, deployment, parameters={"out": str(out / "one")})
        assert wait_state(api, first["id"])["state"]["type"] == "COMPLETED"
        (cached,) = (agent_home / "sources" / "bundles").glob("*.tar.gz")
        original = cached.read_bytes()
        # Swap in a bundle whose flow says something else: it must never run.
        cached.write_bytes(original[:-8] + b"tampered")
        second = make_run(api, deployment, parameters={"out": str(out / "two")})
        done = wait_state(api, second["id"])
    finally:
        assert stop(agent) == 0

    assert done["state"]["type"] == "COMPLETED", done["state"]
    assert Path(f"{out / 'two'}-1").read_text().splitlines()[0] == "v1"
    assert cached.read_bytes() == original
    log = (agent_home / "agent.log").read_text()
    assert "bundle_cache_damaged" in log and digest in log
    assert get_run(api, second["id"])["source"]["bundle"] == digest


def test_a_deployment_naming_a_bundle_the_server_lacks_is_refused(api) -> None:
    queue = make_queue(api)
    response = api.post(
        "deployments",
        json={
            "name": f"missing-{time.monotonic_ns()}",
            "work_queue_id": queue["id"],
            "entrypoint": "hello.py:main",
            "source": {"bundle": "sha256:" + "ab" * 32},
        },
    )
    assert response.status_code == 422
    assert "upload it first" in response.json()["detail"]
    bad = api.get("bundles/sha256:nothex")
    assert bad.status_code == 422 and "not a bundle digest" in bad.json()["detail"]
    assert api.get("bundles/sha256:" + "ab" * 32).status_code == 404


def test_a_deployment_file_uploads_its_directory_relative_to_itself(
    api, server, flows, tmp_path
) -> None:
    queue = make_queue(api)
    file = flows.parent / "deploy.yaml"
    file.write_text(
        f"name: f-{time.monotonic_ns()}\nqueue: {queue['name']}\nentrypoint: hello.py:main\n"
        "source: {upload: flows}\n"
    )
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    made = subprocess.run(
        [AGENT, "deployment", "create", "--file", str(file)],
        cwd=elsewhere,
        env=server.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    shown = json.loads(cli(server, "deployment", "inspect", made.stdout.strip()).stdout)
    assert shown["source"]["bundle"].startswith("sha256:")
    assert shown["source"]["bundle"] in stored(server)

    (flows / "hello.py").unlink()  # the entrypoint is checked in the directory to upload
    refused = cli(server, "deployment", "create", "--file", str(file), check=False)
    assert refused.returncode != 0 and "hello.py" in refused.stderr
