"""How the suite is shared out between pytest-xdist workers (``scripts/test.sh`` runs two).

Under ``--dist loadgroup`` each module goes to one worker whole, so a module's own server
(``server_fixture``) starts once. One group goes further, to one worker together: the modules
that start containers of ours and those that compare *every* container carrying our run label
before and after a test (``our_containers()``), since a container of the other worker's test
would read as one this test left behind; and with them the conformance suite, which starts
containers too (its Docker pool) and whose Prefect servers are session fixtures that a second
worker would start again (tens of seconds of CPU each). It is about half the suite's time.

Without xdist (a developer's ``pytest tests/unit``) the marks do nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

TESTS = Path(__file__).parent

CONTAINERS = "containers-and-conformance"
# Modules that start containers carrying our run label, or look at all of them.
_CONTAINER_MODULES = {
    "contract/test_runner_contract.py",
    "integration/test_docker_adopt.py",
    "integration/test_docker_image.py",
    "integration/test_docker_options.py",
    "integration/test_docker_remains.py",
    "integration/test_docker_runner.py",
    "integration/test_git_sources.py",
    "integration/test_readoption.py",
}


def _group(path: Path) -> str:
    module = path.relative_to(TESTS).as_posix()
    if module in _CONTAINER_MODULES or module.startswith("conformance/"):
        return CONTAINERS
    return module


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # xdist's workers get COLUMNS=80; our CLI would then fold its tables for a terminal
        # there is not, and the tests read piped (unwrapped) output.
        os.environ.pop("COLUMNS", None)
        os.environ.pop("LINES", None)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.xdist_group(_group(item.path)))
