"""What the Prefect backend says and keeps as Prefect's worker does (issue 13, items 6-8):
exit explanations, infrastructure_pid per server version, worker labels, tag-filter queues,
and the flow output kept for a run the agent has to end."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime

import pytest

from agent.backends.prefect_hooks import Output
from agent.backends.prefect_labels import WorkerIdentity, exit_lines
from agent.backends.prefect_tagqueues import check_served, tag_queue_runs_filter
from agent.backends.prefect_wire import PQueue
from agent.errors import ConfigError
from agent.models import LogLineCreate, LogStream


def test_exit_lines_explain_a_kill_as_prefect_s_worker_does() -> None:
    (level, message), (_, resolution) = exit_lines(-9)
    assert level == logging.INFO
    assert message.startswith(
        "Process exited with status code: -9. Process exited due to a SIGKILL"
    )
    assert "memory" in resolution
    (level, message), _ = exit_lines(3)
    assert level == logging.ERROR
    assert (
        message
        == "Process exited with status code: 3. Process exited with an unexpected status code."
    )


def test_infrastructure_pid_and_labels_take_each_server_version_s_form() -> None:
    identity = WorkerIdentity(http=None)  # type: ignore[arg-type]  # no call is made
    assert identity.infrastructure_pid("box", 42) == "42"  # Prefect 3's process worker
    identity.major = 2
    assert identity.infrastructure_pid("box", 42) == "box:42"  # Prefect 2's agent
    identity.pool_name, identity.pool_id = "pool", "0f0e"
    assert identity.labels("agent-1") == {
        "prefect.worker.name": "agent-1",
        "prefect.worker.type": "process",
        "prefect.work-pool.name": "pool",
        "prefect.work-pool.id": "0f0e",
    }


def _queue(**fields: object) -> PQueue:
    return PQueue.model_validate(
        {"id": str(uuid.uuid4()), "name": "q", "work_pool_name": "default-agent-pool"} | fields
    )


def test_a_tag_filter_queue_is_refused_on_prefect_3_only() -> None:
    tagged = _queue(filter={"tags": ["t1", "t2"], "deployment_ids": None})
    check_served(tagged, 2)
    check_served(_queue(), 3)
    with pytest.raises(ConfigError) as refused:
        check_served(tagged, 3)
    assert "is a Prefect 2 tag-filter queue (tags: t1, t2)" in refused.value.message
    assert "prefect work-queue create Q --pool P" in (refused.value.hint or "")


def test_a_tag_filter_queue_s_runs_are_found_by_its_filter() -> None:
    deployment = uuid.uuid4()
    assert tag_queue_runs_filter(_queue(filter={"tags": ["t1"]})) == {
        "deployment_id": {"is_null_": False},
        "tags": {"all_": ["t1"]},
    }
    assert tag_queue_runs_filter(_queue(filter={"tags": [], "deployment_ids": [deployment]})) == {
        "deployment_id": {"any_": [str(deployment)]}
    }


def _line(stream: LogStream, text: str) -> LogLineCreate:
    return LogLineCreate(timestamp=datetime.now(UTC), stream=stream, line=text)


def test_output_keeps_the_flow_s_last_lines_not_the_agent_s() -> None:
    output = Output(lines=3)
    run = uuid.uuid4()
    output.keep(run, [_line(LogStream.STDOUT, f"out {i}") for i in range(4)])
    output.keep(run, [_line(LogStream.AGENT, "agent says"), _line(LogStream.STDERR, "err")])
    assert [line.line for line in output.take(run)] == ["out 2", "out 3", "err"]
    assert output.take(run) == []  # taken once


def test_output_kept_is_bounded_in_characters_too() -> None:
    output = Output(lines=2000, chars=100)
    run = uuid.uuid4()
    output.keep(run, [_line(LogStream.STDOUT, f"{i:02d}" + "x" * 38) for i in range(10)])
    kept = [line.line for line in output.take(run)]
    assert [line[:2] for line in kept] == ["08", "09"]  # the last 80 characters that fit
    output.keep(run, [_line(LogStream.STDOUT, "y" * 500)])  # one line over the bound: dropped
    assert output.take(run) == []
