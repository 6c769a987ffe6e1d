"""The job configuration a Prefect run is launched with, merged as Prefect's consumers merge it
(3.9.1 ``BaseJobConfiguration.from_template_and_values``, 2.20 ``PrefectAgent.get_infrastructure``).

The expected values were checked against Prefect 3.9.1's own ``ProcessJobConfiguration``
(``from_template_and_values``) for the same inputs."""

from __future__ import annotations

import re
from typing import Any

import pytest

from agent.backends.prefect_jobvars import (
    apply_values,
    block_configuration,
    merged_variables,
    template_configuration,
)
from agent.errors import ConfigError

#: A process pool's template as `prefect work-pool create --type process` writes it, with
#: defaults a user set in the UI.
TEMPLATE: dict[str, Any] = {
    "job_configuration": {
        "command": "{{ command }}",
        "env": "{{ env }}",
        "labels": "{{ labels }}",
        "name": "{{ name }}",
        "stream_output": "{{ stream_output }}",
        "working_dir": "{{ working_dir }}",
    },
    "variables": {
        "properties": {
            "command": {"type": "string"},
            "env": {"type": "object", "default": {"POOL": "pool", "SHARED": "pool"}},
            "stream_output": {"type": "boolean", "default": True},
            "working_dir": {"type": "string", "default": "/srv/pool"},
        }
    },
}


def test_template_defaults_under_deployment_under_run() -> None:
    values = merged_variables(
        {"env": {"SHARED": "deployment", "DEPLOYMENT": "d"}},
        {"env": {"RUN": "r", "SHARED": "run"}},
    )
    config = template_configuration(TEMPLATE, values)
    assert config.env == {"POOL": "pool", "SHARED": "run", "DEPLOYMENT": "d", "RUN": "r"}
    assert config.working_dir == "/srv/pool"
    assert config.command is None
    assert config.values == {"stream_output": True}


def test_a_run_replaces_every_variable_but_env_whole() -> None:
    values = merged_variables({"working_dir": "/d", "command": "a b"}, {"working_dir": "/r"})
    config = template_configuration(TEMPLATE, values)
    assert (config.working_dir, config.command) == ("/r", ["a", "b"])


def test_null_removes_a_lower_sources_variable_and_values_become_strings() -> None:
    config = template_configuration(TEMPLATE, {"env": {"POOL": None, "N": 5, "B": True}})
    assert config.env == {"POOL": None, "SHARED": "pool", "N": "5", "B": "True"}


def test_dotted_keys_and_a_nested_key_beats_its_dotted_form() -> None:
    config = template_configuration(
        TEMPLATE, {"env.A": "dotted", "env.B": "dotted", "env": {"B": "nested"}}
    )
    assert config.env == {"POOL": "pool", "SHARED": "pool", "A": "dotted", "B": "nested"}


def test_the_templates_own_command_and_text_placeholders() -> None:
    template = {
        "job_configuration": {
            "command": "{{ python }} -m prefect.engine --tag {{ tag }}{{ missing }}",
            "env": {"FIXED": "x", "FROM": "{{ tag }}"},
        },
        "variables": {"properties": {"tag": {"default": "t1"}, "python": {"default": "py"}}},
    }
    config = template_configuration(template, {})
    assert config.command == ["py", "-m", "prefect.engine", "--tag", "t1"]
    assert config.env == {"FIXED": "x", "FROM": "t1"}


def test_an_empty_template_is_the_workers_default() -> None:
    config = template_configuration({}, {"env": {"A": "1"}, "working_dir": "/w"})
    assert (config.env, config.working_dir, config.command) == ({"A": "1"}, "/w", None)


def test_unset_placeholders_and_blocks_are_dropped() -> None:
    assert apply_values(
        {"a": "{{ x }}", "b": ["{{ x }}", 1], "c": "{{ prefect.blocks.s.n }}"}, {}
    ) == {"b": [1]}


def test_a_prefect2_block_with_dotted_overrides_and_the_runs_env() -> None:
    block = {
        "type": "process",
        "env": {"BLOCK": "b", "SHARED": "block"},
        "working_dir": "/b",
        "command": None,
    }
    config = block_configuration(
        block, {"env.OVERRIDE": "o", "env.SHARED": "override"}, {"RUN": "r"}
    )
    assert config.env == {"BLOCK": "b", "SHARED": "override", "OVERRIDE": "o", "RUN": "r"}
    assert (config.working_dir, config.command) == ("/b", None)
    assert block["env"] == {"BLOCK": "b", "SHARED": "block"}  # the cached block is not changed
    assert block_configuration({"command": ["x", "-y"]}, {}).command == ["x", "-y"]


def test_a_dotted_override_through_a_value_is_refused_clearly() -> None:
    with pytest.raises(ConfigError, match=re.escape("'env.A.B': 'A' is not a mapping")):
        block_configuration({"env": {"A": "1"}}, {"env.A.B": "x"})
