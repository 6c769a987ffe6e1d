"""compose.replicas.yaml: two server replicas on one PostgreSQL, and an agent given both URLs.

Read as data only: no Docker Compose here runs it (no registry for the postgres image)."""

from __future__ import annotations

from pathlib import Path

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
