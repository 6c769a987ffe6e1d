"""A damaged spool must not keep the agent from starting, nor its good reports from the server.

The spool outlives the agent; a full disk truncates a file, an operator leaves a stray one. A
real server, a real agent, a spool written by hand as an earlier life (or a person) left it.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest

from tests.support import (
    log_lines,
    make_deployment,
    make_queue,
    make_run,
    running_server,
    start_agent,
    stop,
    wait_for,
)

pytestmark = pytest.mark.integration


def test_damaged_spool_files_are_set_aside_and_the_rest_delivered(tmp_path) -> None:
    home = tmp_path / "home"
    with running_server(home) as server, server.client() as api:
        queue = make_queue(api)
        # The spooled report is about a run on another queue, so the agent never claims it.
        elsewhere = make_deployment(api, make_queue(api), command=["true"])
        run = make_run(api, elsewhere)
        spool = home / "agents" / "careful" / "spool"
        spool.mkdir(parents=True)
        good = {
            "batch_id": str(uuid.uuid4()),
            "lines": [
                {"timestamp": datetime.now(UTC).isoformat(), "stream": "stdout", "line": "kept"}
            ],
        }
        (spool / f"000000000002-logs-{run['id']}.json").write_text(json.dumps(good))
        # Truncated by a full disk, half a report; and files nobody's spool wrote.
        truncated = f"000000000001-state-{run['id']}.json"
        (spool / truncated).write_text('{"type": "COMPLE')
        (spool / "notes.json").write_text("{}")
        (spool / f"000000000003-logs-{run['id']}.json").write_text('{"lines": "not a list"}')

        log_path = tmp_path / "agent.log"
        agent = start_agent(server, queue["id"], "--name", "careful", log_path=log_path)
        try:
            wait_for(lambda: log_lines(api, run["id"]) == ["kept"], what="the good report")
            damaged = spool / "damaged"
            assert sorted(p.name for p in damaged.iterdir()) == sorted(
                [truncated, "notes.json", f"000000000003-logs-{run['id']}.json"]
            )
            wait_for(lambda: not list(spool.glob("*.json")), what="the spool to empty")
            assert agent.poll() is None, log_path.read_text()
            events = [json.loads(line) for line in log_path.read_text().splitlines()]
            warned = [e for e in events if e.get("event") == "spool_entry_damaged"]
            assert len(warned) == 3
            assert all(e["moved_to"].startswith(str(damaged)) for e in warned)
            assert any(e.get("event") == "agent_started" for e in events)
        finally:
            assert stop(agent, timeout=30) == 0
