"""docs/PREFECT_BACKEND.md, followed step by step against a real Prefect 3 server.

The flow and the deploy script are taken from the page itself (the code blocks after
``<!-- file: … -->``), and the commands are the page's, so the page cannot drift from what works.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.conformance.harness import REPO, Agents, PrefectHarness, Queue, clean_env
from tests.support import wait_for

pytestmark = pytest.mark.integration

PAGE = REPO / "docs" / "PREFECT_BACKEND.md"
FILE_BLOCK = re.compile(r"<!-- file: (?P<path>\S+) -->\n```python\n(?P<code>.*?)```", re.S)


def page_files() -> dict[str, str]:
    return {m["path"]: m["code"] for m in FILE_BLOCK.finditer(PAGE.read_text())}


def test_the_page_carries_the_flow_and_the_deploy_script() -> None:
    assert set(page_files()) == {"flows/hello.py", "flows/deploy.py"}


def test_from_prefect_server_start_to_a_completed_run(
    prefect3_harness: PrefectHarness, tmp_path: Path
) -> None:
    prefect = prefect3_harness
    env = clean_env(**prefect.prefect_env())
    bin_dir = prefect.venv / "bin"

    def sh(*argv: str) -> str:
        result = subprocess.run(
            argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, f"{argv}: {result.stdout}\n{result.stderr}"
        return result.stdout

    for path, code in page_files().items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(code)

    sh(str(bin_dir / "prefect"), "work-pool", "create", "etl-pool", "--type", "process")
    sh(str(bin_dir / "prefect"), "work-queue", "create", "etl", "--pool", "etl-pool")
    sh(str(bin_dir / "python"), "flows/deploy.py")
    inspected = sh(
        str(bin_dir / "prefect"), "work-queue", "inspect", "etl", "--pool", "etl-pool", "-o", "json"
    )
    queue_id = json.loads(inspected)["id"]

    agents = Agents(prefect, tmp_path)
    try:
        agents.start(Queue(id=queue_id, name="etl", pool="etl-pool"))
        started = sh(
            str(bin_dir / "prefect"), "deployment", "run", "hello/hello", "--param", "name=Ada"
        )
        run_id = re.search(r"UUID: ([0-9a-f-]{36})", started)
        assert run_id, started

        state = prefect.wait_state(run_id[1], timeout=120)
        assert state["type"] == "COMPLETED", state

        # The flow process sets COMPLETED before its log handler's last batch reaches the
        # server, so the page's `prefect flow-run logs` may need a moment to show the line.
        def logs() -> str | None:
            out = sh(str(bin_dir / "prefect"), "flow-run", "logs", run_id[1])
            return out if "hello Ada" in out else None

        wait_for(logs, timeout=60, interval=1, what="the flow's 'hello Ada' log line")
        pending = [
            s
            for s in prefect.ok("GET", "flow_run_states/", params={"flow_run_id": run_id[1]})
            if s["type"] == "PENDING"
        ]
        assert pending[0]["message"].startswith("claimed by flowagent agent "), pending
    finally:
        agents.stop_all()
