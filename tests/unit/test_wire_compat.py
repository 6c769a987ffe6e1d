"""The wire models across releases: an answer from a newer server still reads, and what a client
sends is checked strictly (a misspelt field is refused, never silently dropped)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import pytest
from pydantic import BaseModel, ValidationError

from agent import models
from agent.models import ClaimedRun, DeploymentCreate, FlowRunCreate, StateProposal, WorkQueue

NOW = datetime(2026, 12, 7, tzinfo=UTC)


def queue() -> dict[str, Any]:
    return {
        "id": str(uuid4()),
        "name": "q",
        "tags": [],
        "concurrency_limit": None,
        "paused": False,
        "created": NOW.isoformat(),
    }


def claimed() -> dict[str, Any]:
    deployment_id = str(uuid4())
    return {
        "flow_run": {
            "id": str(uuid4()),
            "name": "run-1",
            "deployment_id": deployment_id,
            "deployment_name": "d",
            "work_queue_id": str(uuid4()),
            "parameters": {},
            "tags": [],
            "env": {},
            "expected_start_time": NOW.isoformat(),
            "state": {"type": "PENDING", "name": "Pending", "timestamp": NOW.isoformat()},
            "created": NOW.isoformat(),
            "a_field_of_a_newer_server": 1,
        },
        "deployment": {
            "id": deployment_id,
            "name": "d",
            "work_queue_id": str(uuid4()),
            "command": ["true"],
            "created": NOW.isoformat(),
            "updated": NOW.isoformat(),
            "another_new_field": {"x": 1},
        },
    }


def test_an_answer_with_fields_a_newer_server_added_still_reads() -> None:
    run = ClaimedRun.model_validate(claimed())
    assert run.flow_run.name == "run-1" and run.deployment.command == ["true"]
    assert WorkQueue.model_validate(queue() | {"new": "field"}).name == "q"


@pytest.mark.parametrize(
    ("model", "body"),
    [
        (FlowRunCreate, {"paramters": {"x": 1}}),
        (DeploymentCreate, {"name": "d", "work_queue_id": str(uuid4()), "comand": ["true"]}),
        (StateProposal, {"type": "RUNNING", "atempt": 2}),
    ],
)
def test_what_a_client_sends_is_strict(model: type[BaseModel], body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        model.model_validate(body)


def test_every_answer_model_tolerates_new_fields_and_no_request_model_does() -> None:
    tolerant = {
        name
        for name, value in vars(models).items()
        if isinstance(value, type)
        and issubclass(value, BaseModel)
        and value.model_config.get("extra") == "ignore"
    }
    assert {"FlowRun", "ClaimedRun", "Deployment", "WorkQueue", "AgentRecord", "State"} <= tolerant
    assert not {n for n in tolerant if n.endswith(("Create", "Update", "Request"))}, tolerant
    assert "StateProposal" not in tolerant and "Heartbeat" not in tolerant
