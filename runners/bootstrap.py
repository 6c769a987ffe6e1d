"""Run one flow entrypoint inside the flow's own interpreter.

    python /path/to/bootstrap.py <entrypoint>

The subprocess runner starts this file with whatever Python the deployment chose, which has
nothing of flowagent installed, so it uses the standard library only. ``<entrypoint>`` is
``path/to/file.py:func`` (relative to the working directory) or ``package.module:func``.

Environment:
    FLOWAGENT_PARAMETERS   a JSON object, passed as keyword arguments (absent: no arguments)
    FLOWAGENT_HELD         "1": read one line "go" from stdin before calling the flow (a
                           scheduled run started ahead of its time: loaded, then held until the
                           agent says go), then stdin is /dev/null. End of file instead (the
                           agent is gone): exit 3, the flow never began ("not_started" in the
                           result file).
    FLOWAGENT_RESULT_FILE  where to write the outcome as JSON (absent: not written):
                           {"ok": true, "result": ...} or {"ok": true, "result_repr": "..."}
                           or {"ok": false, "error_type": "ValueError", "error_message": "..."},
                           each with "exit_code"; after sys.exit(), {"exit_code": N} only.
                           An agent that is not this process's parent learns its exit status
                           from here (a restarted agent adopting the run).

Exit codes: 0 the flow returned; 1 the flow raised (traceback on stderr); 2 the entrypoint could
not be loaded or called (one ``flowagent: ...`` line on stderr, error_type "EntrypointError").
A flow calling sys.exit() or dying of a signal keeps its own exit status.

The in-process runner imports this module for :func:`load_function` and :func:`check_parameters`,
so they take the working directory as an argument instead of assuming the process's own.
"""

from __future__ import annotations

import os
import sys

# Python put this file's directory (the runners package) first on sys.path. It holds modules
# named like real ones (subprocess.py, docker.py) that would shadow them for the flow, and for
# asyncio, so it must go before anything else is imported.
_HERE = os.path.dirname(os.path.realpath(__file__))
if sys.path and sys.path[0] and os.path.realpath(sys.path[0]) == _HERE:
    del sys.path[0]

import importlib  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import types  # noqa: E402

# Only for type checkers: importing typing costs every run a few milliseconds of start-up.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import ModuleType
    from typing import Any

EXIT_FLOW_FAILED = 1
EXIT_ENTRYPOINT_ERROR = 2
EXIT_NOT_RELEASED = 3


class EntrypointError(Exception):
    """The flow could not be loaded or called; the message is shown to the user as is."""


def load_function(
    entrypoint: str, base_dir: str | None = None, module_name: str | None = None
) -> Callable[..., Any]:
    """Return the callable an entrypoint names, importing its file or module.

    ``base_dir`` is where a relative file path starts and what is put on sys.path (default: the
    working directory). ``module_name`` names a flow file's module (default: from its file name).
    """
    target, sep, attr_path = entrypoint.rpartition(":")
    if not sep or not target or not attr_path:
        raise EntrypointError(
            f"invalid entrypoint {entrypoint!r}: expected path/to/file.py:function "
            "or package.module:function"
        )
    base = base_dir if base_dir is not None else os.getcwd()
    if target.endswith(".py") or os.sep in target or "/" in target:
        module, where = _load_file(target, base, module_name), target
    else:
        module, where = _import_module(target, base), f"module {target}"
    obj: object = module
    for attr in attr_path.split("."):
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            raise EntrypointError(f"{where} has no function {attr_path!r}") from None
    if not callable(obj):
        raise EntrypointError(f"{where}: {attr_path!r} is not callable")
    return obj


def _load_file(path: str, base: str, module_name: str | None) -> ModuleType:
    full = os.path.abspath(os.path.join(base, path))
    if not os.path.isfile(full):
        raise EntrypointError(f"entrypoint file not found: {path} (working directory {base})")
    # The file's directory first, so sibling imports work as under `python file.py`; the working
    # directory too, so the project's own packages import as they do under `python -m`.
    # Entries already present stay where they are (the in-process runner appends them).
    for entry in (base, os.path.dirname(full)):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    name = module_name or os.path.splitext(os.path.basename(full))[0]
    if not name.isidentifier() or name in sys.modules:
        # Never replace a module already loaded (a flow file named json.py): use a private name.
        name = "__flowagent_flow__"
    spec = importlib.util.spec_from_file_location(name, full)
    if spec is None or spec.loader is None:
        raise EntrypointError(f"cannot load {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    # Registered before running it, so dataclasses, pickle and typing can find the module.
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        _print_traceback(exc)
        raise EntrypointError(f"cannot load {path}: {_describe(exc)}") from None
    return module


def _import_module(name: str, base: str) -> ModuleType:
    if base not in sys.path:
        sys.path.insert(0, base)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        # Only a missing target is self-explanatory; a missing dependency of it needs the trace.
        if exc.name is None or not (name == exc.name or name.startswith(exc.name + ".")):
            _print_traceback(exc)
        raise EntrypointError(f"cannot import module {name!r}: {exc}") from None
    except Exception as exc:
        _print_traceback(exc)
        raise EntrypointError(f"cannot import module {name!r}: {_describe(exc)}") from None


def read_parameters() -> dict[str, Any]:
    raw = os.environ.get("FLOWAGENT_PARAMETERS")
    if not raw:
        return {}
    try:
        parameters = json.loads(raw)
    except ValueError as exc:
        raise EntrypointError(f"FLOWAGENT_PARAMETERS is not valid JSON: {exc}") from None
    if not isinstance(parameters, dict):
        raise EntrypointError("FLOWAGENT_PARAMETERS must be a JSON object")
    return parameters


def check_parameters(func: Callable[..., Any], parameters: dict[str, Any]) -> None:
    """Refuse parameters the function cannot take, before running any of it."""
    import inspect  # only when needed: it costs every run's start-up a few milliseconds

    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return  # builtins and some C callables have no signature: let the call decide
    try:
        signature.bind(**parameters)
    except TypeError as exc:
        name = getattr(func, "__name__", "the flow")
        raise EntrypointError(f"parameters do not match {name}{signature}: {exc}") from None


def released() -> bool:
    """Wait for the agent's go when the run was started held; False if it never comes."""
    if os.environ.pop("FLOWAGENT_HELD", None) != "1":
        return True
    line = sys.stdin.buffer.readline()
    # The flow gets the stdin a run has otherwise: nothing.
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    return line == b"go\n"


def call(func: Callable[..., Any], parameters: dict[str, Any]) -> Any:
    """Run the flow; EntrypointError if the parameters do not fit it (then none of it ran)."""
    try:
        result = func(**parameters)
    except TypeError:
        # Python binds the arguments before it runs any of the function, so checking them only
        # after a TypeError is as good as before the call, and spares the others the check.
        check_parameters(func, parameters)
        raise
    if isinstance(result, types.CoroutineType):
        import asyncio  # imported only for async flows: it costs startup time

        result = asyncio.run(result)
    return result


def write_result(document: dict[str, Any], exit_code: int) -> None:
    path = os.environ.get("FLOWAGENT_RESULT_FILE")
    if not path:
        return
    document = {**document, "exit_code": exit_code}
    try:
        text = json.dumps(document)
    except (TypeError, ValueError, RecursionError):
        # Not JSON-serialisable (or circular): say what it was rather than lose it.
        try:
            shown = repr(document["result"])
        except Exception as exc:
            shown = f"<unrepresentable: {_describe(exc)}>"
        text = json.dumps({"ok": True, "result_repr": shown, "exit_code": exit_code})
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as exc:
        # The flow's own outcome stands; the agent falls back to the exit status.
        print(f"flowagent: cannot write the result file: {exc}", file=sys.stderr)


def _describe(exc: BaseException) -> str:
    kind = type(exc)
    name = kind.__qualname__
    if kind.__module__ not in ("builtins", "__main__"):
        name = f"{kind.__module__}.{name}"
    text = str(exc)
    return f"{name}: {text}" if text else name


def _print_traceback(exc: BaseException) -> None:
    # Drop our own frames: the user's code starts below them.
    import traceback  # only a failing run pays for it

    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    traceback.print_exception(type(exc), exc, tb, file=sys.stderr)


#: prctl(2) option: orphaned descendants are re-parented to this process, not to init.
PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    """Keep every process the flow starts in this process's tree, even one that escapes its
    session and group (double fork + setsid, as daemons do): orphaned, it becomes our child
    instead of init's, so the agent (or its fence), which signals this process's whole tree,
    still finds and stops it with the run. Kept across exec; without Linux, nothing is done."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (ImportError, OSError, AttributeError):
        pass


def main(argv: list[str]) -> int:
    become_subreaper()
    # Line by line, so the agent streams output as it is printed even if PYTHONUNBUFFERED is off.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(line_buffering=True)
    try:
        if len(argv) != 2:
            raise EntrypointError(
                "usage: bootstrap.py <path/to/file.py:func | package.module:func>"
            )
        parameters = read_parameters()
        func = load_function(argv[1])
    except EntrypointError as exc:
        return _entrypoint_error(exc)
    if not released():
        print("flowagent: the agent went away before the flow began: not started", file=sys.stderr)
        write_result({"not_started": True}, EXIT_NOT_RELEASED)
        return EXIT_NOT_RELEASED
    try:
        result = call(func, parameters)
    except EntrypointError as exc:
        return _entrypoint_error(exc)
    except SystemExit as exc:
        # The flow's own exit status stands; it is recorded, and the exit goes on.
        write_result({}, _exit_status(exc.code))
        raise
    except Exception as exc:
        # KeyboardInterrupt is not caught: Python then dies of SIGINT, as a signal should.
        message = str(exc)
        document = {"ok": False, "error_type": type(exc).__name__, "error_message": message}
        write_result(document, EXIT_FLOW_FAILED)
        _print_traceback(exc)
        return EXIT_FLOW_FAILED
    write_result({"ok": True, "result": result}, 0)
    return 0


def _entrypoint_error(exc: EntrypointError) -> int:
    print(f"flowagent: {exc}", file=sys.stderr)
    document = {"ok": False, "error_type": "EntrypointError", "error_message": str(exc)}
    write_result(document, EXIT_ENTRYPOINT_ERROR)
    return EXIT_ENTRYPOINT_ERROR


def _exit_status(code: object) -> int:
    """The status ``sys.exit(code)`` makes the interpreter exit with."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    return 1  # a message: printed to stderr, status 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
