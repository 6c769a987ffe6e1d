"""How the suite is shared out between pytest-xdist workers (``scripts/test.sh`` runs two).

Under ``--dist loadgroup`` each module goes to one worker whole, so a module's own server
(``server_fixture``) starts once. Two kinds of module go further, to one worker together:

- those that compare *every* container of ours before and after (``our_containers()``): a
  container of another worker's test, started or removed meanwhile, would read as one this
  test left behind or lost;
- the conformance suite, whose Prefect servers are session fixtures: on two workers each
  would start its own (tens of seconds of CPU each).

Without xdist (a developer's ``pytest tests/unit``) the marks do nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

TESTS = Path(__file__).parent

# Modules that look at every container carrying our run label, not only their own.
_ALL_CONTAINERS = {
    "contract/test_runner_contract.py",
    "integration/test_docker_runner.py",
    "integration/test_docker_remains.py",
    "integration/test_git_sources.py",
}


def _group(path: Path) -> str:
    module = path.relative_to(TESTS).as_posix()
    if module in _ALL_CONTAINERS:
        return "all-containers"
    if module.startswith("conformance/"):
        return "conformance"
    return module


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.xdist_group(_group(item.path)))
