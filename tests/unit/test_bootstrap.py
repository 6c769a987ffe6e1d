"""The flow bootstrap, run as the script it is: ``python bootstrap.py <entrypoint>``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from runners.subprocess import BOOTSTRAP


def bootstrap(
    cwd: Path, entrypoint: str, parameters: dict[str, Any] | None = None, *, result: bool = True
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any] | None]:
    env = {"PATH": os.environ["PATH"]}
    if parameters is not None:
        env["FLOWAGENT_PARAMETERS"] = json.dumps(parameters)
    result_file = cwd / "result.json"
    if result:
        env["FLOWAGENT_RESULT_FILE"] = str(result_file)
    proc = subprocess.run(
        [sys.executable, str(BOOTSTRAP), entrypoint],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    document = json.loads(result_file.read_text()) if result_file.exists() else None
    return proc, document


@pytest.fixture
def flows(tmp_path: Path) -> Path:
    (tmp_path / "flows").mkdir()
    (tmp_path / "flows/etl.py").write_text(
        textwrap.dedent(
            """
            import subprocess

            def add(a, b=2):
                print("adding", a, b)
                return {"sum": a + b}

            def nothing():
                pass

            def opaque():
                return object()

            def shadowing():
                return subprocess.__file__

            async def later(x):
                return [x]

            def fails():
                raise KeyError("missing")

            def exits():
                raise SystemExit(5)

            not_a_function = 42
            """
        )
    )
    return tmp_path


def test_json_result_and_parameters(flows: Path) -> None:
    proc, document = bootstrap(flows, "flows/etl.py:add", {"a": 1, "b": 5})
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "adding 1 5\n", "")
    assert document == {"ok": True, "result": {"sum": 6}, "exit_code": 0}


def test_no_parameters_means_no_arguments(flows: Path) -> None:
    proc, document = bootstrap(flows, "flows/etl.py:nothing")
    assert (proc.returncode, document) == (0, {"ok": True, "result": None, "exit_code": 0})


def test_result_that_is_not_json_is_described(flows: Path) -> None:
    proc, document = bootstrap(flows, "flows/etl.py:opaque")
    assert proc.returncode == 0
    assert document is not None and set(document) == {"ok", "result_repr", "exit_code"}
    assert document["result_repr"].startswith("<object object at 0x")


def test_coroutine_functions_run_to_completion(flows: Path) -> None:
    _, document = bootstrap(flows, "flows.etl:later", {"x": "y"})
    assert document == {"ok": True, "result": ["y"], "exit_code": 0}


def test_the_runners_package_does_not_shadow_the_standard_library(flows: Path) -> None:
    # runners/ holds subprocess.py; Python put it first on sys.path when it started the script.
    _, document = bootstrap(flows, "flows/etl.py:shadowing")
    assert document is not None
    assert Path(document["result"]).parent != BOOTSTRAP.parent


def test_exception_exits_1_with_traceback_and_error(flows: Path) -> None:
    proc, document = bootstrap(flows, "flows/etl.py:fails")
    assert proc.returncode == 1
    assert document == {
        "ok": False,
        "error_type": "KeyError",
        "error_message": "'missing'",
        "exit_code": 1,
    }
    assert proc.stderr.startswith("Traceback (most recent call last):")
    assert proc.stderr.endswith("KeyError: 'missing'\n")
    assert "bootstrap.py" not in proc.stderr  # the user's frames only


def test_system_exit_keeps_the_flows_exit_code(flows: Path) -> None:
    proc, document = bootstrap(flows, "flows/etl.py:exits")
    assert (proc.returncode, document) == (5, {"exit_code": 5})


def test_runs_without_a_result_file(flows: Path) -> None:
    proc, document = bootstrap(flows, "flows/etl.py:add", {"a": 1}, result=False)
    assert (proc.returncode, proc.stdout, document) == (0, "adding 1 2\n", None)


@pytest.mark.parametrize(
    ("entrypoint", "parameters", "message"),
    [
        (
            "flows/missing.py:main",
            None,
            "entrypoint file not found: flows/missing.py (working directory {cwd})",
        ),
        ("flows/etl.py:main", None, "flows/etl.py has no function 'main'"),
        ("flows.etl:main", None, "module flows.etl has no function 'main'"),
        ("flows.etl:not_a_function", None, "module flows.etl: 'not_a_function' is not callable"),
        ("nope.flows:main", None, "cannot import module 'nope.flows': No module named 'nope'"),
        (
            "flows_etl_main",
            None,
            "invalid entrypoint 'flows_etl_main': expected path/to/file.py:function "
            "or package.module:function",
        ),
        (
            "flows/etl.py:add",
            {"a": 1, "c": 3},
            "parameters do not match add(a, b=2): got an unexpected keyword argument 'c'",
        ),
    ],
)
def test_entrypoint_errors_exit_2_with_one_clear_line(
    flows: Path, entrypoint: str, parameters: dict[str, Any] | None, message: str
) -> None:
    proc, document = bootstrap(flows, entrypoint, parameters)
    expected = message.format(cwd=flows)
    assert proc.returncode == 2
    assert proc.stderr == f"flowagent: {expected}\n"
    assert document == {
        "ok": False,
        "error_type": "EntrypointError",
        "error_message": expected,
        "exit_code": 2,
    }


def test_a_flow_file_that_fails_to_import_shows_its_traceback(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("import no_such_dependency\n")
    proc, document = bootstrap(tmp_path, "broken.py:main")
    assert proc.returncode == 2
    assert "Traceback" in proc.stderr and "import no_such_dependency" in proc.stderr
    last = proc.stderr.splitlines()[-1]
    assert last == (
        "flowagent: cannot load broken.py: ModuleNotFoundError: No module named 'no_such_dependency'"
    )
    assert document is not None and document["error_type"] == "EntrypointError"
