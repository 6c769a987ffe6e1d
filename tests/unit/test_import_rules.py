"""The import graph the architecture promises, checked so that it cannot rot.

* ``agent/models.py`` is the wire layer: the only types the server and the agent share. It
  imports nothing of either side.
* The server (``agent/server/``) imports the wire layer, config and the error tree, never the
  agent's side: no backend, no daemon or supervisor, no runner.
* ``runners/`` import nothing of ``agent``: a third-party runner needs only ``runners``.

Each rule is checked twice: statically (every import statement, also inside functions, where a
lazy import would hide) and by importing the modules in a fresh interpreter and looking at what
got loaded.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
AGENT_SIDE = ("agent.backends", "agent.daemon", "agent.supervisor", "agent.fence", "runners")
RUNNERS_MAY_LOAD = ("runners.errors",)  # the error tree's root lives with the runners


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, wherever the import statement is."""
    found: set[str] = set()
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's package
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                found.add(f"{base}.{node.module}" if node.module else base)
            elif node.module:
                found.add(node.module)
    return found


def offending(
    files: list[Path], forbidden: tuple[str, ...], allowed: tuple[str, ...] = ()
) -> dict[str, list[str]]:
    bad: dict[str, list[str]] = {}
    for path in files:
        hits = sorted(
            name
            for name in imported_modules(path)
            if any(name == f or name.startswith(f + ".") for f in forbidden)
            and not any(name == a or name.startswith(a + ".") for a in allowed)
        )
        if hits:
            bad[str(path.relative_to(ROOT))] = hits
    return bad


def loaded_after_import(modules: list[str]) -> set[str]:
    code = f"import sys\nfor m in {modules!r}: __import__(m)\nprint('\\n'.join(sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return set(result.stdout.split())


def test_the_wire_layer_imports_nothing_of_either_side() -> None:
    assert offending([ROOT / "agent" / "models.py"], ("agent", "runners")) == {}


def test_the_server_imports_nothing_of_the_agents_side() -> None:
    files = sorted((ROOT / "agent" / "server").rglob("*.py"))
    assert files
    assert offending(files, AGENT_SIDE, allowed=RUNNERS_MAY_LOAD) == {}


def test_runners_import_nothing_of_the_agent() -> None:
    files = sorted((ROOT / "runners").rglob("*.py"))
    assert files
    assert offending(files, ("agent",)) == {}


@pytest.mark.parametrize(
    ("modules", "forbidden", "allowed"),
    [
        (["agent.server.app", "agent.server.__main__"], AGENT_SIDE, RUNNERS_MAY_LOAD),
        (
            ["runners.subprocess", "runners.docker", "runners.inprocess", "runners.registry"],
            ("agent",),
            (),
        ),
    ],
    ids=["server", "runners"],
)
def test_what_an_import_actually_loads(
    modules: list[str], forbidden: tuple[str, ...], allowed: tuple[str, ...]
) -> None:
    loaded = loaded_after_import(modules)
    assert set(modules) <= loaded
    parents = {a.rsplit(".", 1)[0] for a in allowed}  # loading runners.errors loads runners
    bad = sorted(
        name
        for name in loaded - parents
        if any(name == f or name.startswith(f + ".") for f in forbidden)
        and not any(name == a or name.startswith(a + ".") for a in allowed)
    )
    assert bad == []
