"""The real `agent` console script against a real server process, over HTTP: the happy paths a
user scripts, and the bad inputs that must end in one clear line and exit 1 (never a traceback)."""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import pytest

from tests.integration.cli_fixtures import Cli, running_server
from tests.support import unique

pytestmark = pytest.mark.integration

FLOW = textwrap.dedent(
    """
    import sys

    def greet(name: str, count: int = 1) -> str:
        for i in range(count):
            print(f"hello {name} ({i + 1}/{count})", flush=True)
        return name

    def fail() -> None:
        print("about to fail", file=sys.stderr, flush=True)
        raise ValueError("bad data")
    """
)


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    home = tmp_path_factory.mktemp("cli")
    (home / "flows").mkdir()
    (home / "flows" / "demo.py").write_text(FLOW)
    with running_server(home) as cli:
        yield cli


def is_uuid(text: str) -> bool:
    try:
        UUID(text)
    except ValueError:
        return False
    return True


def make_queue(cli: Cli, *args: str) -> tuple[str, str]:
    name = unique("q")
    result = cli("work-queue", "create", name, *args)
    return name, result.stdout.strip()


# --------------------------------------------------------------------------- work queues


def test_work_queue_lifecycle(cli: Cli) -> None:
    name = unique("etl")
    created = cli("work-queue", "create", name, "--tag", "prod", "--concurrency-limit", "2")
    assert is_uuid(created.stdout.rstrip("\n")) and created.stdout.count("\n") == 1
    queue_id = created.stdout.strip()
    assert name in created.stderr

    listing = cli("work-queue", "ls").stdout
    row = next(line.split() for line in listing.splitlines() if queue_id in line)
    assert row == [queue_id, name, "prod", "2", "no"]
    assert any(q["id"] == queue_id for q in cli.json("work-queue", "ls", "--json"))

    by_name, by_id = (
        cli.json("work-queue", "inspect", name),
        cli.json("work-queue", "inspect", queue_id),
    )
    assert by_name == by_id
    assert by_name["tags"] == ["prod"] and by_name["concurrency_limit"] == 2

    assert "paused" in cli("work-queue", "pause", name).stdout
    assert cli.json("work-queue", "inspect", queue_id)["paused"] is True
    assert "resumed" in cli("work-queue", "resume", queue_id).stdout
    assert cli.json("work-queue", "inspect", queue_id)["paused"] is False

    empty = cli("work-queue", "preview", name)
    assert empty.stdout == "" and "no runs due" in empty.stderr

    deleted = cli("work-queue", "delete", name, "--yes")
    assert f"deleted work queue {name!r}" in deleted.stdout
    gone = cli("work-queue", "inspect", queue_id, ok=False)
    assert gone.returncode == 1
    assert gone.stderr.splitlines() == [
        f"error: no work queue with id {queue_id!r}",
        "hint: list the queues with agent work-queue ls",
    ]


def test_created_paused(cli: Cli) -> None:
    _, queue_id = make_queue(cli, "--paused")
    assert cli.json("work-queue", "inspect", queue_id)["paused"] is True


# --------------------------------------------------------------------------- deployments and runs


def test_deployment_from_flags(cli: Cli) -> None:
    queue, queue_id = make_queue(cli, "--tag", "prod")
    name = unique("greet")
    result = cli(
        "deployment", "create", "flows/demo.py:greet", "--name", name, "--queue", queue,
        "--param", "name=world", "--param", "count=3", "--param", 'opts={"a": [1, 2]}',
        "--param", 'quoted="7"', "--tag", "prod", "--env", "N=3", "--timeout", "60",
        "--retries", "2", "--runner-option", "python=python3",
    )  # fmt: skip
    deployment_id = result.stdout.strip()
    assert is_uuid(deployment_id)
    assert f"created deployment {name!r}" in result.stderr
    assert "warning" not in result.stderr  # the run's tags match the queue's filter

    d = cli.json("deployment", "inspect", name)
    assert d["id"] == deployment_id
    assert d["work_queue_id"] == queue_id
    assert d["entrypoint"] == "flows/demo.py:greet"
    assert d["working_dir"] == str(cli.home)  # the current directory, made absolute
    assert d["parameters"] == {"name": "world", "count": 3, "opts": {"a": [1, 2]}, "quoted": "7"}
    assert d["env"] == {"N": "3"}
    assert (d["timeout_seconds"], d["retries"], d["tags"]) == (60, 2, ["prod"])
    assert d["runner_options"] == {"python": "python3"}
    assert cli.json("deployment", "inspect", deployment_id) == d

    again = cli(
        "deployment", "create", "--command", "echo 'a b'", "--name", name, "--queue", queue_id
    )
    assert again.stdout.strip() == deployment_id
    assert f"updated deployment {name!r}" in again.stderr
    assert "requires the tag(s) prod" in again.stderr  # no --tag prod this time: a warning
    assert cli.json("deployment", "inspect", name)["command"] == ["echo", "a b"]

    listing = cli("deployment", "ls").stdout
    assert any(line.split()[:3] == [name, deployment_id, queue] for line in listing.splitlines())


def test_deployments_from_a_file(cli: Cli) -> None:
    queue, queue_id = make_queue(cli)
    first, second = unique("a"), unique("b")
    path = cli.home / "deployments.yaml"
    path.write_text(
        textwrap.dedent(
            f"""
            deployments:
              - name: {first}
                queue: {queue}
                entrypoint: flows/demo.py:greet
                parameters: {{name: file, count: 2}}
                env: {{WORKERS: 4}}
              - name: {second}
                command: "sh -c 'exit 0'"
                working_dir: flows
                timeout_seconds: 5
            """
        )
    )
    result = cli("deployment", "create", "--file", str(path), "--queue", queue_id)
    ids = result.stdout.split()
    assert len(ids) == 2 and all(map(is_uuid, ids))
    a, b = cli.json("deployment", "inspect", first), cli.json("deployment", "inspect", second)
    assert (a["id"], b["id"]) == tuple(ids)
    assert a["parameters"] == {"name": "file", "count": 2} and a["env"] == {"WORKERS": "4"}
    assert a["working_dir"] == str(cli.home)  # relative to the file
    assert b["working_dir"] == str(cli.home / "flows")
    assert b["command"] == ["sh", "-c", "exit 0"] and b["work_queue_id"] == queue_id


def test_run_then_flow_run_commands(cli: Cli) -> None:
    queue, queue_id = make_queue(cli)
    name = unique("d")
    cli("deployment", "create", "--command", "true", "--name", name, "--queue", queue)
    run_id = cli("deployment", "run", name, "--param", "n=1", "--tag", "adhoc").stdout.strip()
    assert is_uuid(run_id)

    rows = [line.split() for line in cli("flow-run", "ls", "--queue", queue).stdout.splitlines()]
    assert rows[0][:4] == ["id", "name", "deployment", "state"]
    [row] = [r for r in rows if r[0] == run_id]
    assert row[2:4] == [name, "SCHEDULED"] and row[-1] == "-"
    assert [r["id"] for r in cli.json("flow-run", "ls", "--deployment", name, "--json")] == [run_id]
    assert cli.json("flow-run", "ls", "--queue", queue_id, "--state", "completed", "--json") == []

    preview = cli("work-queue", "preview", queue_id).stdout
    assert run_id in preview and "SCHEDULED" in preview

    inspected = cli.json("flow-run", "inspect", run_id)
    assert inspected["parameters"] == {"n": 1} and inspected["tags"] == ["adhoc"]
    # (a slow machine may have marked it Late by now: still SCHEDULED, under another name)
    assert {s["type"] for s in inspected["state_history"]} == {"SCHEDULED"}

    cancelled = cli("flow-run", "cancel", run_id)
    assert cancelled.stdout.strip().endswith("CANCELLED")
    history = cli.json("flow-run", "inspect", run_id)["state_history"]
    assert [s["type"] for s in history][-1] == "CANCELLED"
    assert {s["type"] for s in history[:-1]} == {"SCHEDULED"}
    again = cli("flow-run", "cancel", run_id, ok=False)
    assert (
        again.returncode == 1 and again.stderr.startswith("error: ") and "CANCELLED" in again.stderr
    )

    logs = cli("flow-run", "logs", run_id)
    assert logs.stdout == ""

    cli("deployment", "delete", name, "--yes")
    missing = cli("deployment", "inspect", name, ok=False)
    assert missing.returncode == 1 and "agent deployment ls" in missing.stderr


def test_watch_a_run_through_a_real_agent(cli: Cli) -> None:
    queue, queue_id = make_queue(cli)
    good, bad = unique("greet"), unique("fail")
    cli(
        "deployment",
        "create",
        "flows/demo.py:greet",
        "--name",
        good,
        "--queue",
        queue,
        "--param",
        "name=x",
    )
    cli("deployment", "create", "flows/demo.py:fail", "--name", bad, "--queue", queue)
    agent_name = unique("agent")
    agent = cli.start_agent(queue_id, "--name", agent_name)

    watched = cli("deployment", "run", good, "--param", "count=2", "--watch", timeout=60)
    lines = watched.stdout.splitlines()
    run_id = lines[0]
    assert is_uuid(run_id)
    assert "stdout hello x (1/2)" in lines and "stdout hello x (2/2)" in lines
    assert lines[-1].startswith("flow run ") and lines[-1].endswith("finished: COMPLETED")

    failed = cli("deployment", "run", bad, "--watch", ok=False, timeout=60)
    assert failed.returncode == 1
    assert "stderr about to fail" in failed.stdout
    assert "finished: FAILED" in failed.stdout and "bad data" in failed.stdout

    logs = cli("flow-run", "logs", run_id).stdout.splitlines()
    assert "stdout hello x (1/2)" in logs
    follow = cli("flow-run", "logs", run_id, "--follow").stdout  # terminal already: returns
    assert follow.strip().endswith("finished: COMPLETED")

    rows = [line.split() for line in cli("flow-run", "ls", "--queue", queue).stdout.splitlines()]
    assert {r[3] for r in rows[1:]} == {"COMPLETED", "FAILED"}
    assert {r[-1] for r in rows[1:]} == {agent_name}

    agents = [line.split() for line in cli("agents", "ls").stdout.splitlines()]
    [row] = [r for r in agents if r[0] == agent_name]
    assert row[2:5] == ["ONLINE", queue, "0"]
    assert agent.poll() is None


# --------------------------------------------------------------------------- config


def test_config_view_shows_sources(cli: Cli) -> None:
    result = cli("config", "view", "--show-sources", AGENT_LIMIT="3")
    rows = {
        line.split()[0]: line.split()[1:] for line in result.stdout.splitlines() if line.strip()
    }
    assert rows["api_url"] == [cli.api_url, "env"]
    assert rows["limit"] == ["3", "env"]
    assert rows["home"] == [str(cli.home), "env"]
    assert rows["heartbeat_seconds"] == ["5.0", "default"]


# --------------------------------------------------------------------------- bad input


def test_start_needs_known_queues_and_a_positive_limit(cli: Cli) -> None:
    result = cli("start", "abc", ok=False)
    assert result.returncode == 1
    assert result.stderr.endswith(
        "error: no work queue named 'abc'\nhint: list the queues with `agent work-queue ls`\n"
    )
    _, queue_id = make_queue(cli)
    result = cli("start", queue_id, "--limit", "0", ok=False)
    assert result.returncode == 1
    assert result.stderr.startswith("error: --limit: bad value 0 for limit: must be 1 or more")


def test_unknown_queue_says_how_to_list(cli: Cli) -> None:
    for ref in ("no-such-queue", "00000000-0000-0000-0000-000000000000"):
        result = cli("work-queue", "pause", ref, ok=False)
        assert result.returncode == 1
        assert result.stderr.endswith("hint: list the queues with agent work-queue ls\n")
    result = cli(
        "deployment", "create", "--command", "true", "--name", "x", "--queue", "nope", ok=False
    )
    assert result.returncode == 1 and "no work queue with name 'nope'" in result.stderr


def test_unknown_queue_id_for_start_is_reported_by_the_agent(cli: Cli) -> None:
    result = cli("start", "00000000-0000-0000-0000-000000000000", "--run-once", ok=False)
    assert result.returncode == 1
    assert "00000000-0000-0000-0000-000000000000" in result.stderr
    assert "agent work-queue ls" in result.stderr


def test_server_unreachable_is_fast_and_clear(cli: Cli, tmp_path: Path) -> None:
    from tests.support import free_port

    url = f"http://127.0.0.1:{free_port()}/api"
    began = time.monotonic()
    result = cli("work-queue", "ls", ok=False, AGENT_API_URL=url)
    assert time.monotonic() - began < 10
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"error: cannot reach the API at {url} (")
    assert lines[1] == "hint: start it with agent server start, or set --api-url / AGENT_API_URL"
    assert result.stdout == ""


def test_malformed_deployment_file_says_where(cli: Cli) -> None:
    path = cli.home / "broken.yaml"
    path.write_text("name: x\nqueue: q\nparameters: {a: 1\n")
    result = cli("deployment", "create", "--file", str(path), ok=False)
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: {path}:4:1: not valid YAML")

    path.write_text("name: x\nqueue: q\ncommand: 'true'\nretries: many\n")
    result = cli("deployment", "create", "--file", str(path), ok=False)
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: {path}:4: retries: ")


def test_json_looking_params_must_parse(cli: Cli) -> None:
    result = cli(
        "deployment", "create", "--command", "true", "--name", "x", "--queue", "q", "--param", "x={a",
        ok=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.startswith("error: --param x: '{a' looks like JSON but does not parse")


def test_unknown_config_key(cli: Cli) -> None:
    result = cli("config", "set", "colour", "blue", ok=False)
    assert result.returncode == 1
    assert "error: config set: unknown setting 'colour'" in result.stderr
    assert "hint: valid settings: api_url, api_key" in result.stderr


def test_conflicts_are_errors_with_the_servers_reason(cli: Cli) -> None:
    name, _ = make_queue(cli)
    result = cli("work-queue", "create", name, ok=False)
    assert result.returncode == 1 and "already exists" in result.stderr and result.stdout == ""
    cli("deployment", "create", "--command", "true", "--name", unique("d"), "--queue", name)
    result = cli("work-queue", "delete", name, "--yes", ok=False)
    assert result.returncode == 1
    assert "hint: delete its deployments first" in result.stderr
    result = cli("work-queue", "delete", name, ok=False)
    assert result.returncode == 1 and "hint: pass --yes" in result.stderr


def test_api_key(tmp_path: Path) -> None:
    with running_server(tmp_path / "secured", api_key="s3cret-key-for-cli") as secured:
        refused = secured("work-queue", "ls", ok=False)
        assert refused.returncode == 1
        assert refused.stderr.startswith("error: the server refused our credentials (401)")
        assert "s3cret" not in refused.stderr
        assert secured("work-queue", "ls", AGENT_API_KEY="s3cret-key-for-cli").returncode == 0
        assert secured("--api-key", "s3cret-key-for-cli", "work-queue", "ls").returncode == 0
        view = secured("config", "view", AGENT_API_KEY="s3cret-key-for-cli").stdout
        assert "s3cret-key-for-cli" not in view and "s3******li" in view


def test_every_error_is_one_or_two_lines(cli: Cli) -> None:
    result = cli("flow-run", "inspect", "not-a-run", ok=False)
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1
    assert json.dumps(result.stdout) == '""'
