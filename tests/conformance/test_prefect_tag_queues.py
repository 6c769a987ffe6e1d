"""Prefect 2 tag-filter queues serve exactly the runs ``prefect agent`` serves (issue 13, item 6).

A queue made with ``prefect work-queue create Q --tag t1`` has a filter, not runs of its own:
it matches every scheduled run, of any queue, that has a deployment and the filter's tags. The
pool's ``get_scheduled_flow_runs`` ignores the filter (the agent used to run exactly the runs
Prefect's agent skips); ``work_queues/{id}/get_runs`` applies it. The scenario runs real
``prefect agent`` (2.20.27) on such a queue, then the agent on the same queue with the same
kinds of runs, and compares what each executed, run for run. Prefect 3.9.1 still stores such
queues but nothing of it serves them: the agent refuses them there, clearly.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conformance.harness import (
    FLOWS,
    TERMINAL,
    PrefectHarness,
    clean_env,
    unique,
)
from tests.support import AGENT, stop, wait_for

pytestmark = pytest.mark.integration

LEGACY_POOL = "default-agent-pool"
#: Each kind of run: its deployment (a queue of the legacy pool, or of a process pool) and
#: its tags. Which of them a tag-filter queue on "t1" serves is what is compared.
KINDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "t1": ("a", ("t1",)),
    "t1+t2": ("b", ("t1", "t2")),
    "untagged": ("a", ()),
    "t2": ("b", ("t2",)),
    "t1, process pool": ("p", ("t1",)),
}


def tag_queue(prefect: PrefectHarness, tag: str) -> dict[str, Any]:
    """A tag-filter queue made as Prefect 2 users make one."""
    name = unique("tagq")
    subprocess.run(
        [str(prefect.venv / "bin" / "prefect"), "work-queue", "create", name, "--tag", tag],
        env=clean_env(**prefect.prefect_env()),
        check=True,
        capture_output=True,
        timeout=120,
    )
    body = {"work_queues": {"name": {"any_": [name]}}}
    (queue,) = prefect.ok("POST", "work_queues/filter", json=body)
    assert queue["filter"]["tags"] == [tag] and queue["work_pool_name"] == LEGACY_POOL, queue
    return dict(queue)


def deploy(prefect: PrefectHarness, pool: str, queue: str, marks: Path) -> str:
    flow = prefect.ok("POST", "flows/", json={"name": "mark"})
    body = {
        "name": unique("d"),
        "flow_id": flow["id"],
        "work_pool_name": pool,
        "work_queue_name": queue,
        "entrypoint": "flows.py:mark",
        "parameters": {"marker_dir": str(marks)},
        "pull_steps": [
            {"prefect.deployments.steps.set_working_directory": {"directory": str(FLOWS)}}
        ],
    }
    return str(prefect.ok("POST", "deployments/", json=body)["id"])


def served(
    prefect: PrefectHarness, deployments: dict[str, str], marks: Path, consumer: Any
) -> tuple[dict[str, str], set[str]]:
    """Create one run of each kind, then a last "t1" run; start ``consumer``; once the last run
    has ended (the consumer has polled after all the others were due) and nothing is starting
    or running, the kinds whose run it executed. Returns (kind -> run id, executed kinds)."""
    runs = {kind: prefect.run(deployments[d], tags=tags) for kind, (d, tags) in KINDS.items()}
    last = prefect.run(deployments["a"], tags=("t1",))
    process = consumer()
    try:
        prefect.wait_state(last, timeout=120)

        def settled() -> bool:
            states = [prefect.state(r)["type"] for r in runs.values()]
            return all(s in TERMINAL or s == "SCHEDULED" for s in states)

        wait_for(settled, timeout=60, what="no run starting or running")
    finally:
        code = stop(process, timeout=60)
    if process.args[0] == AGENT:  # ours must stop cleanly; Prefect's agent exits as it does
        assert code == 0, code
    executed = {kind for kind, run in runs.items() if any(marks.glob(f"{run}-*"))}
    # Ran means ran once, and ended COMPLETED; not run means never claimed.
    for kind, run in runs.items():
        if kind in executed:
            assert len(list(marks.glob(f"{run}-*"))) == 1, kind
            assert prefect.state(run)["type"] == "COMPLETED", (kind, prefect.history(run))
        else:  # Scheduled, or Late (a SCHEDULED state too): never claimed
            assert set(prefect.history(run)) == {"SCHEDULED"}, (kind, prefect.history(run))
    return runs, executed


@pytest.mark.timeout(600)
def test_a_tag_filter_queue_runs_exactly_what_prefect_agent_runs(
    prefect2_harness: PrefectHarness, tmp_path: Path
) -> None:
    prefect = prefect2_harness
    marks = tmp_path / "marks"
    marks.mkdir()
    queue = tag_queue(prefect, "t1")
    legacy = {}
    for key in ("a", "b"):
        legacy[key] = unique(f"q{key}")
        prefect.ok("POST", f"work_pools/{LEGACY_POOL}/queues", json={"name": legacy[key]})
    process_queue = prefect.queue()
    deployments = {
        "a": deploy(prefect, LEGACY_POOL, legacy["a"], marks),
        "b": deploy(prefect, LEGACY_POOL, legacy["b"], marks),
        "p": deploy(prefect, process_queue.pool or "", process_queue.name, marks),
    }

    def prefect_agent() -> subprocess.Popen[bytes]:
        env = clean_env(**prefect.prefect_env(), PREFECT_AGENT_QUERY_INTERVAL="1")
        with (tmp_path / "prefect-agent.log").open("ab") as log:
            return subprocess.Popen(
                [
                    str(prefect.venv / "bin" / "prefect"),
                    "agent",
                    "start",
                    "--work-queue",
                    queue["name"],
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=tmp_path,
            )

    def our_agent() -> subprocess.Popen[bytes]:
        with (tmp_path / "agent.log").open("ab") as log:
            return subprocess.Popen(
                [AGENT, "start", queue["id"], "--name", unique("agent"), *prefect.agent_args()],
                env=prefect.agent_env(tmp_path / "agent-home"),
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    theirs, by_prefect = served(prefect, deployments, marks, prefect_agent)
    _, by_agent = served(prefect, deployments, marks, our_agent)

    assert by_prefect == {"t1", "t1+t2", "t1, process pool"}, by_prefect
    assert by_agent == by_prefect, (tmp_path / "agent.log").read_text()[-3000:]
    # What Prefect's agent left scheduled, the agent left too (it sees those runs as well).
    for kind, run in theirs.items():
        if kind not in by_prefect:
            assert set(prefect.history(run)) == {"SCHEDULED"}, (kind, prefect.history(run))


def test_a_tag_filter_queue_on_prefect_3_is_refused_clearly(
    prefect3_harness: PrefectHarness, tmp_path: Path
) -> None:
    """Prefect 3.9.1 keeps such queues (in its 'prefect-agent' pool) but its worker refuses
    that pool and it has no agent: the agent refuses them too, saying what to do."""
    prefect = prefect3_harness
    body = {"name": unique("tagq"), "filter": {"tags": ["t1"]}}
    queue = prefect.ok("POST", "work_queues/", json=body)
    assert queue["work_pool_name"] == LEGACY_POOL, queue
    result = subprocess.run(
        [AGENT, "start", queue["id"], *prefect.agent_args()],
        env=prefect.agent_env(tmp_path) | {"AGENT_LOG_FORMAT": "console"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result
    assert "is a Prefect 2 tag-filter queue (tags: t1)" in result.stderr, result.stderr
    assert "prefect work-queue create Q --pool P" in result.stderr, result.stderr
