"""A Prefect run's job configuration, merged from the sources Prefect's own consumers read.

Prefect 3 (and 2.x workers): the work pool's base job template holds a ``job_configuration``
with ``{{ placeholders }}`` and a ``variables`` schema whose defaults fill them; the
deployment's job variables go over the defaults and the run's over the deployment's
(``env`` merged key by key, any other variable replaced whole; ``env.X`` dotted keys allowed).
This is :func:`template_configuration`, a port of 3.9.1's
``BaseJobConfiguration.resolve_for_flow_run`` and ``from_template_and_values``
(``prefect/workers/base.py``) with ``apply_values`` (``prefect/utilities/templating``).
Block references (``{{ prefect.blocks.… }}``) and variables (``{{ prefect.variables.… }}``)
are not resolved: such a value is left out, as if unset.

Prefect 2 agents (a ``prefect-agent`` pool): the deployment's infrastructure block (a
``Process`` block document: ``env``, ``working_dir``, ``command``) with the deployment's
overrides applied as dotted paths (``env.X=…``, what ``prefect deployment build --override``
writes). This is :func:`block_configuration`, after 2.20's ``PrefectAgent.get_infrastructure``
(``prefect/agent.py``); the run's own ``env`` goes over it, as on our server.

Either way a variable set to null removes what a lower source set.
"""

from __future__ import annotations

import copy
import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.errors import ConfigError

#: Prefect's placeholder pattern (``PLACEHOLDER_CAPTURE_REGEX``).
_PLACEHOLDER = re.compile(r"({{\s*([\w\.\-\[\]$]+)\s*}})")
#: Placeholders this port leaves unresolved, as not set (server-side blocks and variables).
_UNRESOLVED = ("prefect.blocks.", "prefect.variables.")


class _NotSet:
    """Prefect's NotSet: a placeholder with no value, dropped from the configuration."""


NOT_SET = _NotSet()


@dataclass(frozen=True)
class JobConfiguration:
    """What one run is launched with, as Prefect's consumer would launch it.

    ``env``: the variables for the engine's process (None removes an inherited one),
    ``working_dir``: where it starts (None: a fresh directory of the run's own),
    ``command``: argv instead of ``python -m prefect.engine`` (None: that),
    ``values``: every other resolved variable (``image``, ``volumes``… of a docker pool).
    """

    env: dict[str, str | None] = field(default_factory=dict)
    working_dir: str | None = None
    command: list[str] | None = None
    values: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- Prefect 3 pools


def merged_variables(
    deployment: Mapping[str, Any] | None, run: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The deployment's job variables under the run's: ``env`` key by key, others whole."""
    merged = copy.deepcopy(dict(deployment or {}))
    overrides = copy.deepcopy(dict(run or {}))
    if isinstance(merged.get("env"), dict) and isinstance(overrides.get("env"), dict):
        merged["env"].update(overrides.pop("env"))
    merged.update(overrides)
    return merged


def template_configuration(
    base_job_template: Mapping[str, Any] | None, values: Mapping[str, Any]
) -> JobConfiguration:
    """The pool's template filled with its defaults under ``values`` (see the module)."""
    template = dict(base_job_template or {})
    base: dict[str, Any] = copy.deepcopy(dict(template.get("job_configuration") or {}))
    if not base:
        # An empty template (a pool made through the API, not the CLI) is the worker's
        # default one: every variable in its own placeholder, no defaults.
        keys = ("command", "env", "working_dir", *values)
        base = {key.split(".")[0]: "{{ " + key.split(".")[0] + " }}" for key in keys}
    properties = (template.get("variables") or {}).get("properties") or {}
    variables: dict[str, Any] = {
        name: attrs["default"]
        for name, attrs in properties.items()
        if isinstance(attrs, dict) and attrs.get("default") is not None
    }
    if variables.get("env"):
        # The defaults' env joins the template's own before the deployment's replaces it.
        base["env"] = (
            base["env"] | variables["env"]
            if isinstance(base.get("env"), dict)
            else variables["env"]
        )
    variables.update(_undot(values))
    if isinstance(base.get("env"), dict) and variables.get("env"):
        base["env"] = base["env"] | variables["env"]
    resolved = apply_values(base, variables)
    assert isinstance(resolved, dict)
    return _configuration(resolved)


def _undot(values: Mapping[str, Any]) -> dict[str, Any]:
    """``{"env.X": 1}`` → ``{"env": {"X": 1}}``; a nested key beats the dotted form."""
    nested: dict[str, Any] = {}
    for key, value in values.items():
        if "." in key:
            _set_in(nested, key.split("."), value)
    for key, value in values.items():
        if "." not in key:
            if isinstance(nested.get(key), dict) and isinstance(value, dict):
                nested[key] = _deep_merge(nested[key], value)
            else:
                nested[key] = value
    return nested


def _set_in(target: dict[str, Any], path: list[str], value: Any) -> None:
    for key in path[:-1]:
        current = target.setdefault(key, {})
        if not isinstance(current, dict):
            raise ConfigError(
                f"job variable {'.'.join(path)!r}: {key!r} is not a mapping",
                hint="fix the deployment's job variables (infra_overrides)",
            )
        target = current
    target[path[-1]] = value


def _deep_merge(into: dict[str, Any], other: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(into)
    for key, value in other.items():
        if isinstance(merged.get(key), dict) and isinstance(value, dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def apply_values(template: Any, values: Mapping[str, Any]) -> Any:
    """Prefect's ``apply_values`` with ``remove_notset``: a string that is one placeholder
    becomes its value (any type); placeholders inside text become ``str(value)`` ("" when
    unset); dict keys and list items whose value is unset are dropped."""
    if isinstance(template, str):
        found = _PLACEHOLDER.findall(template)
        if not found:
            return template
        if len(found) == 1 and found[0][0] == template and not found[0][1].startswith("$"):
            name = found[0][1]
            if name.startswith(_UNRESOLVED):
                return NOT_SET
            return _lookup(values, name)

        def replace(match: re.Match[str]) -> str:
            name = match.group(2)
            if name.startswith(_UNRESOLVED):
                return match.group(1)
            if name.startswith("$"):
                # The worker's own environment, and the agent is the worker here.
                return os.environ.get(name[1:], "")
            value = _lookup(values, name)
            return "" if value is NOT_SET else str(value)

        return _PLACEHOLDER.sub(replace, template)
    if isinstance(template, dict):
        filled = {key: apply_values(value, values) for key, value in template.items()}
        return {key: value for key, value in filled.items() if value is not NOT_SET}
    if isinstance(template, list):
        items = [apply_values(value, values) for value in template]
        return [value for value in items if value is not NOT_SET]
    return template


def _lookup(values: Mapping[str, Any], name: str) -> Any:
    current: Any = values
    for key in name.replace("[", ".").replace("]", "").split("."):
        if isinstance(current, Mapping) and key in current:
            current = current[key]
        elif isinstance(current, list) and key.isdigit() and int(key) < len(current):
            current = current[int(key)]
        else:
            return NOT_SET
    return current


# --------------------------------------------------------------------------- Prefect 2 blocks


def block_configuration(
    block: Mapping[str, Any] | None, overrides: Mapping[str, Any] | None, run_env: Any = None
) -> JobConfiguration:
    """A 2.x infrastructure block's data with the deployment's dotted overrides set into it,
    and the run's ``env`` job variable over the result."""
    data: dict[str, Any] = copy.deepcopy(dict(block or {}))
    for key, value in (overrides or {}).items():
        _set_in(data, str(key).split("."), value)
    if isinstance(run_env, dict):
        env = data.get("env")
        data["env"] = {**(env if isinstance(env, dict) else {}), **run_env}
    return _configuration(data)


# --------------------------------------------------------------------------- the result


def _configuration(resolved: Mapping[str, Any]) -> JobConfiguration:
    values = dict(resolved)
    raw_env = values.pop("env", None)
    env = (
        {str(k): None if v is None else str(v) for k, v in raw_env.items()}
        if isinstance(raw_env, dict)
        else {}
    )
    working_dir = values.pop("working_dir", None)
    command = values.pop("command", None)
    return JobConfiguration(
        env=env,
        working_dir=str(working_dir) if working_dir else None,
        command=_command(command),
        values=values,
    )


def _command(command: Any) -> list[str] | None:
    """A template's command is a string (split as a shell would), a block's a list."""
    if not command:
        return None
    if isinstance(command, list):
        return [str(part) for part in command] or None
    try:
        return shlex.split(str(command)) or None
    except ValueError as exc:
        raise ConfigError(
            f"job variable command {command!r} cannot be split into words: {exc}",
            hint="fix the command in the work pool's base job template or the job variables",
        ) from exc
