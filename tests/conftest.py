"""How the suite is shared out between pytest-xdist workers (``scripts/test.sh`` runs two).

``--dist loadscope`` here means :class:`ModuleGroups`: each module goes to one worker whole, so
a module's own server (``server_fixture``) starts once; and one group goes further, to one
worker together: the modules that start containers of ours and those that compare *every*
container carrying our run label before and after a test (``our_containers()``), since a
container of the other worker's test would read as one this test left behind; and with them
the conformance suite, which starts containers too (its Docker pool) and whose Prefect servers
are session fixtures that a second worker would start again (tens of seconds of CPU each).
That group is about half the suite's time.

(Not ``xdist_group`` marks with ``--dist loadgroup``: xdist 3.8 puts the group in
``item._nodeid``, which pytest 9 no longer reports, so every test was scheduled alone.)
"""

from __future__ import annotations

import os
from typing import Any

import pytest

CONTAINERS = "containers-and-conformance"
# Modules that start containers carrying our run label, or look at all of them.
_CONTAINER_MODULES = {
    "tests/contract/test_runner_contract.py",
    "tests/integration/test_docker_adopt.py",
    "tests/integration/test_docker_image.py",
    "tests/integration/test_docker_options.py",
    "tests/integration/test_docker_remains.py",
    "tests/integration/test_docker_runner.py",
    "tests/integration/test_git_sources.py",
    "tests/integration/test_readoption.py",
}


def group_of(nodeid: str) -> str:
    """The unit of work a test belongs to: its module, or the containers' group."""
    module = nodeid.split("::", 1)[0]
    if module in _CONTAINER_MODULES or module.startswith("tests/conformance/"):
        return CONTAINERS
    return module


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getvalue("dist") != "loadscope":
        return None  # what was asked for instead
    from xdist.scheduler import LoadScopeScheduling

    class ModuleGroups(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return group_of(nodeid)

    # In collection order, not most tests first: the long units (chaos, the containers' group,
    # the benchmark and fuzz modules of tests/integration) then start early, and the many short
    # unit modules come last, to even out the two workers' ends.
    config.option.loadscopereorder = False
    return ModuleGroups(config, log)


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # xdist's workers get COLUMNS=80; our CLI would then fold its tables for a terminal
        # there is not, and the tests read piped (unwrapped) output.
        os.environ.pop("COLUMNS", None)
        os.environ.pop("LINES", None)
