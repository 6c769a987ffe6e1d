"""Checking a ``file.py:func`` entrypoint exists before a deployment points at it."""

from __future__ import annotations

import ast
from pathlib import Path

from agent.errors import InputError


def _defined_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    return names


def check_entrypoint(entrypoint: str, working_dir: Path) -> None:
    """Fail early when a ``file.py:func`` entrypoint's file or function is missing here.

    Module entrypoints (``package.module:func``) are not checked: they resolve in the flow's
    interpreter, which may not be this one. Pass --no-check when the agent's host differs.
    """
    target, _, func = entrypoint.rpartition(":")
    if not target.endswith(".py"):
        return
    hint = (
        "fix the entrypoint (a path is relative to the working directory), or pass --no-check "
        "if it exists only where the agent runs"
    )
    path = Path(target)
    full = path if path.is_absolute() else working_dir / path
    if not full.is_file():
        raise InputError(f"entrypoint file {str(full)!r} does not exist", hint=hint)
    try:
        tree = ast.parse(full.read_bytes(), filename=str(full))
    except SyntaxError as exc:
        raise InputError(
            f"entrypoint file {str(full)!r} has a syntax error at line {exc.lineno}: {exc.msg}",
            hint=hint,
        ) from None
    except OSError as exc:
        raise InputError(f"cannot read entrypoint file {str(full)!r}: {exc.strerror}") from None
    names = _defined_names(tree)
    if func.split(".")[0] not in names and "*" not in names:
        raise InputError(
            f"entrypoint file {str(full)!r} defines no function {func!r}",
            hint=hint,
        )
