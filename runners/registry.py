"""Find runners by name: every runner, ours included, registers under one entry-point group.

A third-party package adds a runner by declaring, in its pyproject.toml::

    [project.entry-points."flowagent.runners"]
    nomad = "flowagent_nomad:NomadRunner"

The class needs a ``name`` and an async ``start(spec, sink)`` (see :mod:`runners.base`), a
constructor taking no arguments, and optionally ``Options``: a pydantic model of its options.
A runner that fails to import never breaks listing; it is reported with its error.
"""

from __future__ import annotations

import difflib
import types
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any, NamedTuple, cast

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticUndefined

from runners.base import Runner
from runners.errors import InputError, RunnerError, UnknownRunner

GROUP = "flowagent.runners"


@dataclass(frozen=True)
class RunnerEntry:
    """One installed runner: its class, or why it cannot be used."""

    name: str
    target: str  # "module:Class", as the entry point declares it
    package: str | None  # the distribution that declares it
    cls: type | None = None
    error: str | None = None


class OptionInfo(NamedTuple):
    option: str
    type: str
    default: str
    description: str


def runner_entries() -> list[RunnerEntry]:
    """Every runner installed, loadable or not, sorted by name (for ``agent runner ls``)."""
    by_name: dict[str, list[EntryPoint]] = {}
    for ep in entry_points(group=GROUP):
        by_name.setdefault(ep.name, []).append(ep)
    return [_load_entry(name, eps) for name, eps in sorted(by_name.items())]


def available_runners() -> dict[str, type]:
    """The runners that load, by name."""
    return {e.name: e.cls for e in runner_entries() if e.cls is not None}


def runner_class(name: str) -> type:
    """The class registered as ``name``; :class:`UnknownRunner` if none, RunnerError if broken.

    Only ``name``'s entry point is imported: the other plug-ins cannot break or slow it (the
    fence looks runners up this way when it must kill).
    """
    eps = list(entry_points(group=GROUP, name=name))
    if eps:
        entry = _load_entry(name, eps)
        if entry.cls is None:
            raise RunnerError(
                f"runner {name!r} is installed but cannot be loaded: {entry.error}",
                hint=f"check or reinstall the package that provides it ({entry.package})",
            )
        return entry.cls
    installed = ", ".join(sorted({ep.name for ep in entry_points(group=GROUP)})) or "none"
    raise UnknownRunner(
        f"no runner named {name!r} is installed", hint=f"installed runners: {installed}"
    )


def load_runner(name: str) -> Runner:
    """A new instance of the runner registered as ``name``."""
    cls = runner_class(name)
    try:
        return cast(Runner, cls())
    except Exception as exc:
        raise RunnerError(f"runner {name!r} failed to initialise: {_describe(exc)}") from exc


def validate_options(name: str, options: dict[str, Any], cls: type | None = None) -> dict[str, Any]:
    """Check a deployment's options for runner ``name``; return them normalised (with defaults).

    ``cls`` is the runner's class when the caller holds it already (the daemon, for every run
    it launches): looking it up reads every installed distribution's metadata.

    Raises :class:`InputError` saying what is wrong and which options exist.
    """
    model = _options_model(cls if cls is not None else runner_class(name))
    if model is None:
        if options:
            raise InputError(
                f"runner {name!r} takes no options, got: {', '.join(map(str, options))}"
            )
        return {}
    try:
        return model.model_validate(options).model_dump(mode="json")
    except ValidationError as exc:
        problems = "; ".join(_plain(error, model) for error in exc.errors())
        raise InputError(
            f"invalid options for runner {name!r}: {problems}",
            hint="valid options: " + ", ".join(f"{o.option} ({o.type})" for o in _options(model)),
        ) from None


def describe_runner(name: str) -> list[OptionInfo]:
    """The options runner ``name`` takes: (option, type, default, description) each."""
    model = _options_model(runner_class(name))
    return _options(model) if model is not None else []


def _load_entry(name: str, eps: list[EntryPoint]) -> RunnerEntry:
    ep = eps[0]
    package = ep.dist.name if ep.dist is not None else None
    if len(eps) > 1:
        # Neither wins silently: which one ran would depend on install order.
        owners = ", ".join(f"{e.value} ({e.dist.name if e.dist else '?'})" for e in eps)
        return RunnerEntry(name, ep.value, package, error=f"registered more than once: {owners}")
    try:
        obj = ep.load()
    except Exception as exc:  # any import-time failure of a plug-in
        return RunnerEntry(name, ep.value, package, error=f"cannot import {ep.value}: {exc!r}")
    if not isinstance(obj, type) or not callable(getattr(obj, "start", None)):
        return RunnerEntry(name, ep.value, package, error=f"{ep.value} is not a runner class")
    return RunnerEntry(name, ep.value, package, cls=obj)


def _options_model(cls: type) -> type[BaseModel] | None:
    model = getattr(cls, "Options", None)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _options(model: type[BaseModel]) -> list[OptionInfo]:
    infos = []
    for option, field in model.model_fields.items():
        default = field.get_default(call_default_factory=True)
        infos.append(
            OptionInfo(
                option=option,
                type=_type_name(field.annotation),
                default="(required)" if default is PydanticUndefined else repr(default),
                description=field.description or "",
            )
        )
    return infos


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type) and not isinstance(annotation, types.GenericAlias):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _plain(error: Any, model: type[BaseModel]) -> str:
    """One pydantic error in words a deployment author understands."""
    where = ".".join(str(part) for part in error["loc"]) or "options"
    if error["type"] == "extra_forbidden":
        close = difflib.get_close_matches(where, list(model.model_fields), n=1)
        return f"unknown option {where!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
    if error["type"] == "missing":
        return f"option {where!r} is required"
    return f"option {where!r}: {error['msg']} (got {error.get('input')!r})"


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
