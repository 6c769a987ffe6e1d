"""compose.replicas.yaml: two server replicas on one PostgreSQL, and an agent given both URLs;
and what both compose files ask of a user before their first command.

Read as data only: CI has no Docker Compose and no registry for the postgres image."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from agent.server.engines import parse_database_url

REPO = Path(__file__).resolve().parents[2]


def test_two_replicas_share_one_postgres_and_the_agent_knows_both() -> None:
    services = yaml.safe_load((REPO / "compose.replicas.yaml").read_text())["services"]
    assert set(services) == {"postgres", "server-a", "server-b", "agent"}
    urls = set()
    for name in ("server-a", "server-b"):
        server = services[name]
        assert server["command"][:2] == ["server", "start"]
        assert server["depends_on"]["postgres"]["condition"] == "service_healthy"
        url = server["environment"]["AGENT_DATABASE_URL"]
        assert parse_database_url(url).host == "postgres"
        urls.add(url)
    assert len(urls) == 1  # one database
    agent = services["agent"]
    assert agent["command"][0] == "start"
    assert agent["environment"]["AGENT_API_URL"].split(",") == [
        "http://server-a:4200/api",
        "http://server-b:4200/api",
    ]
    assert {d for d, c in agent["depends_on"].items() if c["condition"] == "service_healthy"} == {
        "server-a",
        "server-b",
    }


@pytest.mark.parametrize("name", ["compose.yaml", "compose.replicas.yaml"])
def test_the_steps_set_every_value_the_file_requires_before_compose_reads_it(name: str) -> None:
    # Compose interpolates every service of the file for any command, even `up -d server`:
    # a value required by ${VAR:?...} must be in .env before the first `docker compose` step.
    text = (REPO / name).read_text()
    steps = [line.removeprefix("#").strip() for line in text.splitlines() if line.startswith("#")]
    first_compose = next(i for i, step in enumerate(steps) if step.startswith("docker compose"))
    set_before = {
        match for step in steps[:first_compose] for match in re.findall(r'echo "([A-Z_]+)=', step)
    }
    required = set(re.findall(r"\$\{([A-Z_]+):?\?", text))
    assert required, "the file requires nothing: the pattern no longer matches"
    assert required <= set_before, f"required but set only later, or never: {required - set_before}"
