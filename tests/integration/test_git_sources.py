"""Deployments whose code comes from git: real repositories, real server, agents and flows."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.contract.dockerd import BASE_IMAGE, our_containers, require_dockerd
from tests.gitrepos import FLOW, Repo, loose_objects, make_repo, serving
from tests.support import (
    Server,
    cli,
    get_run,
    log_lines,
    make_deployment,
    make_queue,
    make_run,
    server_fixture,
    start_agent,
    stop,
    wait_for,
    wait_state,
)

pytestmark = pytest.mark.integration


server = server_fixture("sources")


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    repo = make_repo(tmp_path / "git")
    repo.commit({"flows/hello.py": FLOW, "flows/VERSION": "v1\n"}, "first")
    return repo


@pytest.fixture
def out(tmp_path: Path) -> Path:
    path = tmp_path / "out"
    path.mkdir()
    path.chmod(0o777)  # a container's user writes here too
    return path


@pytest.fixture
def agent_on(server: Server, tmp_path: Path) -> Iterator[Any]:
    """Start agents (each with its own home unless given one); all must exit 0 at the end."""
    started: list[subprocess.Popen[bytes]] = []

    def start(
        queue: dict[str, Any],
        *args: str,
        home: Path | None = None,
        name: str | None = None,
        **env: str,
    ) -> subprocess.Popen[bytes]:
        home = home or tmp_path / f"agent-home-{len(started)}"
        home.mkdir(exist_ok=True)
        name = name or f"a-{time.monotonic_ns()}"
        process = start_agent(
            server,
            queue["id"],
            "--name",
            name,
            *args,
            log_path=home / f"{name}.log",
            AGENT_HOME=str(home),
            **env,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            assert stop(process) == 0, f"agent exited {process.returncode}"


def git_deployment(
    api: httpx.Client,
    queue: dict[str, Any],
    url: str,
    fields: dict[str, Any] | None = None,
    **source: Any,
) -> Any:
    return make_deployment(
        api,
        queue,
        working_dir=None,
        entrypoint="hello.py:main",
        source={"git": url, "path": "flows", **source},
        **(fields or {}),
    )


def params(out: Path) -> dict[str, str]:
    """Where a run's flow writes what it saw: a file of its own (out-<attempt>)."""
    return {"out": str(out / uuid.uuid4().hex)}


def written(out: Path, run: dict[str, Any], attempt: int = 1) -> list[str]:
    return Path(f"{run['parameters']['out']}-{attempt}").read_text().splitlines()


def checkouts(home: Path) -> list[Path]:
    return sorted(home.glob("agents/*/checkouts/*"))


def test_run_from_git_completes_records_the_commit_and_leaves_no_checkout(
    api, server, agent_on, repo, out, tmp_path
) -> None:
    queue = make_queue(api)
    deployment = git_deployment(api, queue, repo.url, ref="main")
    home = tmp_path / "h"
    agent_on(queue, home=home)

    run = make_run(api, deployment, parameters=params(out))
    done = wait_state(api, run["id"])

    assert done["state"]["type"] == "COMPLETED", done["state"]
    assert done["source"]["commit"] == repo.head()
    assert done["source"]["ref"] == "main"
    version, cwd, mode = written(out, run)
    assert version == "v1" and mode == "rw"
    # It ran in its own checkout, under the agent's home, at the source's path.
    assert cwd.startswith(str(home / "agents")) and cwd.endswith(f"{run['id']}/flows")
    assert not Path(cwd).exists()
    assert checkouts(home) == []
    shown = cli(server, "flow-run", "inspect", run["id"]).stdout
    assert repo.head() in shown and '"commit"' in shown
    assert any(repo.head() in line for line in log_lines(api, run["id"]))


def test_a_new_commit_is_fetched_alone_and_recorded_by_the_next_run(
    api, agent_on, repo, out, tmp_path
) -> None:
    queue = make_queue(api)
    home = tmp_path / "h"
    with serving(repo.bare.parent) as http:
        deployment = git_deployment(api, queue, http.url(repo))
        agent_on(queue, home=home)
        first = wait_state(api, make_run(api, deployment, parameters=params(out))["id"])
        (mirror,) = [p for p in (home / "sources" / "git").iterdir() if p.is_dir()]
        before = loose_objects(mirror)

        second_commit = repo.commit({"flows/VERSION": "v2\n"}, "second")
        second = wait_state(api, make_run(api, deployment, parameters=params(out))["id"])

    assert first["state"]["type"] == second["state"]["type"] == "COMPLETED"
    assert first["source"]["commit"] != second_commit
    assert second["source"]["commit"] == second_commit
    assert written(out, second)[0] == "v2"
    # One commit, one tree per changed directory level (root, flows/), one blob: 4 objects.
    assert loose_objects(mirror) - before == 4


RETRY_FLOW = """\
import os
import pathlib
import subprocess


def main(out: str, work: str) -> str:
    version = pathlib.Path("VERSION").read_text().strip()
    attempt = os.environ["FLOWAGENT_ATTEMPT"]
    pathlib.Path(f"{out}-{attempt}").write_text(version + "\\n")
    if attempt == "1":
        # Move the branch on while this attempt runs, then fail: the retry must not see it.
        pathlib.Path(work, "flows", "VERSION").write_text("moved\\n")
        for args in (["add", "-A"], ["commit", "-qm", "moved"], ["push", "-q", "origin", "HEAD:main"]):
            subprocess.run(["git", *args], cwd=work, check=True)
        raise RuntimeError("attempt 1 fails on purpose")
    return version
"""


def test_a_retry_runs_the_first_attempts_commit_after_the_branch_moved(
    api, agent_on, repo, out
) -> None:
    first_commit = repo.commit({"flows/hello.py": RETRY_FLOW}, "retrying flow")
    queue = make_queue(api)
    deployment = git_deployment(api, queue, repo.url, fields={"retries": 1})
    agent_on(
        queue,
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@e.invalid",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@e.invalid",
    )

    run = make_run(api, deployment, parameters=params(out) | {"work": str(repo.work)})
    done = wait_state(api, run["id"], timeout=60)

    assert done["state"]["type"] == "COMPLETED", done["state"]
    assert done["attempt"] == 2
    assert repo.head() != first_commit  # the branch did move
    assert done["source"]["commit"] == first_commit
    assert written(out, run, 1) == ["v1"] and written(out, run, 2) == ["v1"]


def test_a_token_is_used_but_never_stored_or_logged(
    api, server, agent_on, repo, out, tmp_path
) -> None:
    token = "s3cr3t-tok-" + str(time.monotonic_ns())
    queue = make_queue(api)
    home = tmp_path / "h"
    with serving(repo.bare.parent, token=token) as http:
        good = git_deployment(api, queue, http.url(repo), token_env="FLOWS_PAT")
        bad = git_deployment(api, queue, http.url(repo), token_env="WRONG_PAT")
        unset = git_deployment(api, queue, http.url(repo), token_env="UNSET_PAT")
        agent_on(queue, home=home, FLOWS_PAT=token, WRONG_PAT="not-the-token")
        ok = wait_state(api, make_run(api, good, parameters=params(out))["id"])
        refused = wait_state(api, make_run(api, bad, parameters=params(out))["id"])
        missing = wait_state(api, make_run(api, unset, parameters=params(out))["id"])
        assert any(request.startswith("POST") for request in http.requests)

    assert ok["state"]["type"] == "COMPLETED", ok["state"]
    assert refused["state"]["type"] == "FAILED"
    assert "git fetch failed" in refused["state"]["message"]
    assert "credentials refused" in refused["state"]["message"]
    assert "$WRONG_PAT" in refused["state"]["message"]
    assert missing["state"]["type"] == "FAILED"
    assert "$UNSET_PAT" in missing["state"]["message"]
    encoded = __import__("base64").b64encode(f"x-access-token:{token}".encode())
    for root in (home, server.home):
        for path in root.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                assert token.encode() not in data and encoded not in data, path
    assert token not in json.dumps(api.get("deployments").json())


def test_bad_refs_and_repositories_fail_the_run_and_the_agent_goes_on(
    api, agent_on, repo, out, tmp_path
) -> None:
    queue = make_queue(api)
    typo = git_deployment(api, queue, repo.url, ref="mian")
    nowhere = git_deployment(api, queue, (tmp_path / "no-such.git").as_uri())
    closed = git_deployment(api, queue, "http://127.0.0.1:9/flows.git")  # discard port: refused
    fine = git_deployment(api, queue, repo.url)
    agent_on(queue)

    states = {
        name: wait_state(api, make_run(api, d, parameters=params(out))["id"], timeout=60)
        for name, d in [("typo", typo), ("nowhere", nowhere), ("closed", closed), ("fine", fine)]
    }

    assert states["typo"]["state"]["type"] == "FAILED"
    assert (
        f"ref 'mian' not found in {repo.url}; did you mean 'main'?"
        in (states["typo"]["state"]["message"])
    )
    assert states["nowhere"]["state"]["type"] == "FAILED"
    assert "git fetch failed" in states["nowhere"]["state"]["message"]
    assert states["closed"]["state"]["type"] == "FAILED"
    assert "repository unreachable" in states["closed"]["state"]["message"]
    # Retried with backoff before giving up (4 tries: 3 retries logged).
    log = "".join(p.read_text() for p in (tmp_path / "agent-home-0").glob("*.log"))
    retries = [line for line in log.splitlines() if "source_fetch_retrying" in line]
    assert len(retries) == 3 and all("127.0.0.1:9" in line for line in retries)
    assert states["fine"]["state"]["type"] == "COMPLETED"
    assert states["typo"]["source"] is None


def test_two_agents_on_one_host_share_one_mirror_for_twenty_runs(
    api, agent_on, repo, out, tmp_path
) -> None:
    queue = make_queue(api)
    home = tmp_path / "shared"
    with serving(repo.bare.parent) as http:
        deployment = git_deployment(api, queue, http.url(repo))
        agent_on(queue, "--limit", "10", home=home)
        agent_on(queue, "--limit", "10", home=home)
        runs = [make_run(api, deployment, parameters=params(out)) for _ in range(20)]
        done = [wait_state(api, run["id"], timeout=90) for run in runs]
        fetches = [
            r
            for r in http.requests
            if r.startswith("POST") and "upload-pack" in r and not r.endswith("ls-refs")
        ]

    assert [d["state"]["type"] for d in done] == ["COMPLETED"] * 20
    assert {d["source"]["commit"] for d in done} == {repo.head()}
    assert len({d["agent_id"] for d in done}) == 2  # both agents took runs
    assert all(written(out, run)[0] == "v1" for run in runs)
    mirrors = [p for p in (home / "sources" / "git").iterdir() if p.is_dir()]
    assert len(mirrors) == 1
    # Runs that asked while a fetch was under way share it: far fewer fetches than runs.
    assert 1 <= len(fetches) < 20, fetches
    assert checkouts(home) == []


def test_a_sigkilled_agents_checkouts_are_removed_when_it_starts_again(
    api, agent_on, repo, out, tmp_path
) -> None:
    repo.commit(
        {"flows/slow.py": "import time\n\ndef main() -> None:\n    time.sleep(600)\n"}, "slow"
    )
    queue = make_queue(api)
    deployment = make_deployment(
        api,
        queue,
        working_dir=None,
        entrypoint="slow.py:main",
        source={"git": repo.url, "path": "flows"},
    )
    home = tmp_path / "h"
    agent = agent_on(queue, home=home, name="killed")
    run = make_run(api, deployment)
    wait_state(api, run["id"], {"RUNNING"})
    assert len(checkouts(home)) == 1
    # RUNNING is reported before the flow is released and its pid follows in a later report.
    pid = wait_for(lambda: get_run(api, run["id"])["runner_info"].get("pid"), what="the flow's pid")

    agent.send_signal(signal.SIGKILL)
    agent.wait()
    with __import__("contextlib").suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)  # the flow dies too: nothing to take over
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), what="the flow to die")
    assert len(checkouts(home)) == 1  # left behind

    agent_on(queue, home=home, name="killed")
    ended = wait_state(api, run["id"], timeout=60)

    assert ended["state"]["type"] in {"CRASHED", "FAILED"}
    wait_for(lambda: checkouts(home) == [], what="the leftover checkout to go")


@pytest.mark.parametrize("runner", ["subprocess", "inprocess", "docker"])
def test_every_runner_runs_the_same_git_deployment(
    api, agent_on, repo, out, tmp_path, runner
) -> None:
    options: dict[str, Any] = {}
    if runner == "docker":
        require_dockerd()
        options = {"image": BASE_IMAGE, "volumes": [f"{out}:{out}:rw"]}
    queue = make_queue(api)
    deployment = git_deployment(
        api, queue, repo.url, fields={"runner": runner, "runner_options": options}
    )
    home = tmp_path / "h"
    agent_on(queue, home=home)

    run = make_run(api, deployment, parameters=params(out))
    done = wait_state(api, run["id"], timeout=90)

    assert done["state"]["type"] == "COMPLETED", done["state"]
    assert done["source"]["commit"] == repo.head()
    version, cwd, mode = written(out, run)
    assert version == "v1"
    assert cwd.endswith("/flows")
    # Docker gets the checkout read-only; the others run in it as it is.
    assert mode == ("ro" if runner == "docker" else "rw")
    assert checkouts(home) == []
    if runner == "docker":
        wait_for(lambda: not our_containers(), timeout=15, what="the run's container removed")


def test_deployment_create_takes_a_git_source_from_flags_and_files(
    api, server, repo, tmp_path
) -> None:
    queue = make_queue(api)
    name = f"git-{time.monotonic_ns()}"
    # From a directory without the code: it is in the repository, nothing is checked here.
    made = cli(
        server,
        "deployment",
        "create",
        "hello.py:main",
        "--name",
        name,
        "--queue",
        queue["name"],
        "--git",
        repo.url,
        "--ref",
        "main",
        "--path",
        "flows",
        "--token-env",
        "GIT_TOKEN",
    )
    shown = json.loads(cli(server, "deployment", "inspect", made.stdout.strip()).stdout)
    assert shown["source"] == {
        "git": repo.url,
        "ref": "main",
        "path": "flows",
        "token_env": "GIT_TOKEN",
    }
    assert shown["working_dir"] is None

    file = tmp_path / "deploy.yaml"
    file.write_text(
        f"name: {name}-file\nqueue: {queue['name']}\nentrypoint: hello.py:main\n"
        f"source: {{git: '{repo.url}', ref: v1, path: flows}}\n"
    )
    made = cli(server, "deployment", "create", "--file", str(file))
    shown = json.loads(cli(server, "deployment", "inspect", made.stdout.strip()).stdout)
    assert shown["source"]["ref"] == "v1" and shown["working_dir"] is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--git", "https://bob:ghp_abc@example.com/r.git"], "token_env"),
        (["--ref", "main"], "--ref go with --git URL"),
        (["--git", "file:///r.git", "--workdir", "/tmp"], "--workdir and --git"),
        (["--git", "file:///r.git", "--path", "../up"], "inside the repository"),
        (["--git", "file:///r.git", "--token-env", "ghp_abc-def"], "NAME"),
    ],
)
def test_deployment_create_refuses_bad_sources_clearly(api, server, args, message) -> None:
    queue = make_queue(api)
    result = cli(
        server,
        "deployment",
        "create",
        "hello.py:main",
        "--name",
        "x",
        "--queue",
        queue["name"],
        *args,
        check=False,
    )
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    assert "ghp_abc@" not in result.stderr


def test_an_absolute_entrypoint_is_refused_with_a_source(api, server) -> None:
    queue = make_queue(api)
    result = cli(
        server,
        "deployment",
        "create",
        "/srv/flows/hello.py:main",
        "--name",
        "x",
        "--queue",
        queue["name"],
        "--git",
        "file:///r.git",
        check=False,
    )
    assert result.returncode != 0
    assert "absolute path" in result.stderr and "relative" in result.stderr


WAITER = """\
import os
import pathlib
import time


def main(out: str) -> str:
    here = pathlib.Path(__file__).resolve().parent
    pathlib.Path(out, "started").write_text(f"{os.getpid()}\\n{here}\\n")
    while not pathlib.Path(out, "release").exists():
        time.sleep(0.02)
    # Still there after the agent's restart: the taken-over run reads its own code.
    return (here / "VERSION").read_text().strip()
"""


def test_a_run_taken_over_after_a_restart_keeps_its_checkout_until_it_ends(
    api, agent_on, repo, out, tmp_path
) -> None:
    repo.commit({"flows/waiter.py": WAITER}, "waiter")
    queue = make_queue(api)
    deployment = make_deployment(
        api,
        queue,
        working_dir=None,
        entrypoint="waiter.py:main",
        source={"git": repo.url, "path": "flows"},
        parameters={"out": str(out)},
    )
    home = tmp_path / "h"
    first = agent_on(queue, home=home, name="phoenix")
    run = make_run(api, deployment)
    started = out / "started"
    wait_for(
        lambda: started.exists() and len(started.read_text().splitlines()) == 2,
        timeout=60,
        what="the flow to start",
    )
    pid, where = started.read_text().splitlines()
    first.send_signal(signal.SIGKILL)
    first.wait()

    agent_on(queue, home=home, name="phoenix")
    wait_for(
        lambda: any("took the run over" in line for line in log_lines(api, run["id"])),
        timeout=60,
        what="the restarted agent to take the run over",
    )
    assert Path(where).is_dir()  # kept for the run it took over
    assert Path(f"/proc/{pid}").exists()
    (out / "release").touch()
    done = wait_state(api, run["id"], timeout=60)

    assert done["state"]["type"] == "COMPLETED", done["state"]
    assert done["runner_info"]["result"] == "v1"
    assert done["attempt"] == 1
    assert not Path(where).exists() and checkouts(home) == []


def test_an_entrypoint_outside_the_working_dir_is_refused_for_docker(
    api, server, agent_on, tmp_path
) -> None:
    workdir, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    workdir.mkdir()
    elsewhere.mkdir()
    (elsewhere / "flow.py").write_text("def main() -> None:\n    pass\n")
    entrypoint = f"{elsewhere}/flow.py:main"
    queue = make_queue(api)
    refused = cli(
        server,
        "deployment",
        "create",
        entrypoint,
        "--name",
        "x",
        "--queue",
        queue["name"],
        "--workdir",
        str(workdir),
        "--runner",
        "docker",
        check=False,
    )
    assert refused.returncode != 0
    assert "outside the working directory" in refused.stderr

    # Made through the API (no local check): the run FAILS with the same reason, before any
    # container is made.
    require_dockerd()
    deployment = make_deployment(
        api,
        queue,
        working_dir=str(workdir),
        entrypoint=entrypoint,
        runner="docker",
        runner_options={"image": BASE_IMAGE},
    )
    agent_on(queue)
    done = wait_state(api, make_run(api, deployment)["id"], timeout=60)
    assert done["state"]["type"] == "FAILED"
    assert "outside the working directory" in done["state"]["message"]


def test_a_remote_whose_head_names_no_branch_still_serves_its_branches(
    api, agent_on, repo, out
) -> None:
    # As `git init --bare` makes on many hosts: HEAD → master, while only main is pushed.
    (repo.bare / "HEAD").write_text("ref: refs/heads/master\n")
    repo.commit({"flows/link": ""}, "placeholder")
    (repo.work / "flows" / "link").unlink()
    (repo.work / "flows" / "link").symlink_to("/etc")
    repo.commit({}, "a link out of the repository")
    queue = make_queue(api)
    named = git_deployment(api, queue, repo.url, ref="main")
    headless = git_deployment(api, queue, repo.url)
    linked = make_deployment(
        api,
        queue,
        working_dir=None,
        entrypoint="hello.py:main",
        source={"git": repo.url, "ref": "main", "path": "flows/link"},
    )
    agent_on(queue)

    ok = wait_state(api, make_run(api, named, parameters=params(out))["id"], timeout=60)
    no_head = wait_state(api, make_run(api, headless, parameters=params(out))["id"], timeout=60)
    escaped = wait_state(api, make_run(api, linked, parameters=params(out))["id"], timeout=60)

    assert ok["state"]["type"] == "COMPLETED", ok["state"]
    assert no_head["state"]["type"] == "FAILED"
    assert "has no HEAD branch to run" in no_head["state"]["message"]
    assert "give the deployment's source a ref" in no_head["state"]["message"]
    assert escaped["state"]["type"] == "FAILED"
    assert "path 'flows/link' is not a directory in commit" in escaped["state"]["message"]
