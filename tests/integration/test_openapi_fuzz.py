"""Schemathesis against the server's own OpenAPI schema: no request it generates gets a 5xx.

Examples, boundary values (coverage) and random fuzzing of every operation, with a real
server over real HTTP. ``FUZZ_EXAMPLES`` raises the count per operation (CI: 15).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import Server, server_fixture

pytestmark = pytest.mark.integration

ST = Path(sys.executable).parent / "st"
EXAMPLES = os.environ.get("FUZZ_EXAMPLES", "15")


server = server_fixture("fuzz")


@pytest.mark.timeout(900)
def test_no_generated_request_gets_a_server_error(server: Server) -> None:
    schema = server.url.removesuffix("/api") + "/openapi.json"
    command = [str(ST), "run", schema, "--checks", "not_a_server_error", "--seed", "1"]
    command += ["--max-examples", EXAMPLES, "--phases", "examples,coverage,fuzzing"]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=850,
    )
    server_log = (server.home / "server.log").read_text(errors="replace")
    assert result.returncode == 0, (
        f"schemathesis found server errors:\n{result.stdout[-6000:]}\n"
        f"server log tail:\n{server_log[-4000:]}"
    )
    assert "Traceback" not in server_log, server_log[-4000:]
