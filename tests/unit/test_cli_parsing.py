"""What the CLI makes of typed input: k=v pairs, UUIDs, deployment files, entrypoint checks."""

from __future__ import annotations

import textwrap
from pathlib import Path
from uuid import UUID

import pytest

from agent.cli.entrypoints import check_entrypoint
from agent.cli.parsing import (
    DeploymentSpec,
    load_deployment_file,
    parse_pairs,
    parse_uuid,
    parse_value,
    spec_from_flags,
)
from agent.errors import InputError

# --------------------------------------------------------------------------- k=v


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("3", 3),
        ("2.5", 2.5),
        ("true", True),
        ("null", None),
        ('"a"', "a"),
        ('"3"', "3"),
        ("hello", "hello"),
        ("hello world", "hello world"),
        ("", ""),
        ("2024-01-01", "2024-01-01"),
        ("NaN", "NaN"),  # not JSON: stays a string instead of becoming a float nan
        ('{"a": [1, 2]}', {"a": [1, 2]}),
        ("[1, 2]", [1, 2]),
    ],
)
def test_values_are_json_when_they_parse(raw: str, value: object) -> None:
    assert parse_value(raw, "--param x") == value


@pytest.mark.parametrize("raw", ["{bad", "[1, 2", '"unterminated', '{"a": 1,}'])
def test_json_looking_but_malformed_values_are_errors(raw: str) -> None:
    with pytest.raises(InputError) as info:
        parse_value(raw, "--param x")
    assert info.value.message.startswith("--param x: ")
    assert "looks like JSON but does not parse" in info.value.message


def test_pairs() -> None:
    pairs = parse_pairs(["n=3", "who=world", "url=http://h/?a=b", "n=4", " k =v"], "--param")
    assert pairs == {"n": 4, "who": "world", "url": "http://h/?a=b", "k": "v"}


def test_env_pairs_stay_strings() -> None:
    assert parse_pairs(["N=3", "FLAG=true", "E="], "--env", json_values=False) == {
        "N": "3",
        "FLAG": "true",
        "E": "",
    }


@pytest.mark.parametrize("item", ["novalue", "=3", ""])
def test_pairs_need_a_key_and_an_equals_sign(item: str) -> None:
    with pytest.raises(InputError, match="expected KEY=VALUE") as info:
        parse_pairs([item], "--param")
    assert info.value.hint == "e.g. --param n=3"


# --------------------------------------------------------------------------- UUIDs


def test_uuid() -> None:
    value = "85bc6f10-e717-4295-90b4-9d49b8ccd32b"
    assert parse_uuid(value, "work-queue", "queues", "agent work-queue ls") == UUID(value)
    with pytest.raises(InputError) as info:
        parse_uuid("abc", "work-queue", "queues", "agent work-queue ls")
    assert info.value.message == (
        "'abc' is not a work-queue id (a UUID); list queues with agent work-queue ls"
    )


# --------------------------------------------------------------------------- flags → spec


def test_spec_from_flags_splits_the_command() -> None:
    spec = spec_from_flags({"name": "n", "queue": "q", "command": "sh -c 'echo hi; exit 3'"})
    assert spec.command == ["sh", "-c", "echo hi; exit 3"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"name": "n", "entrypoint": "flow.py"}, "entrypoint must look like"),
        ({"name": "n"}, "give exactly one of 'entrypoint' or 'command'"),
        ({"name": "n", "command": "x", "timeout_seconds": 0}, "--timeout: Input should be greater"),
        ({"name": "n", "command": "x", "retries": -1}, "--retries: "),
        ({"name": "n", "command": "sh -c 'unclosed"}, "--command: "),
        ({"name": "", "command": "x"}, "--name: "),
    ],
)
def test_spec_from_flags_errors_name_the_flag(values: dict[str, object], message: str) -> None:
    with pytest.raises(InputError, match=r"^invalid deployment: ") as info:
        spec_from_flags(values)
    assert message in info.value.message


# --------------------------------------------------------------------------- deployment files


def write(tmp_path: Path, text: str, name: str = "deploy.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def test_one_deployment_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        name: etl
        queue: etl
        entrypoint: flows/etl.py:main
        working_dir: /srv/pipelines
        parameters: {day: "2024-01-01", n: 3}
        tags: [prod]
        env: {DB_URL: "postgresql://x", WORKERS: 4, DEBUG: true}
        runner_options: {python: python3}
        timeout_seconds: 3600
        retries: 2
        """,
    )
    [entry] = load_deployment_file(path)
    assert entry.spec == DeploymentSpec(
        name="etl",
        queue="etl",
        entrypoint="flows/etl.py:main",
        working_dir="/srv/pipelines",
        parameters={"day": "2024-01-01", "n": 3},
        tags=["prod"],
        env={"DB_URL": "postgresql://x", "WORKERS": "4", "DEBUG": "true"},
        runner_options={"python": "python3"},
        timeout_seconds=3600,
        retries=2,
    )
    assert entry.where == f"{path}:1"


def test_deployments_list_and_command_forms(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        deployments:
          - name: a
            queue: q
            command: "sh -c 'echo a'"
          - name: b
            queue: q
            command: [python, -c, "print(1)"]
        """,
    )
    a, b = load_deployment_file(path)
    assert a.spec.command == ["sh", "-c", "echo a"]
    assert b.spec.command == ["python", "-c", "print(1)"]
    assert b.where == f"{path}:5 (deployments[1])"


def test_a_top_level_list_works_too(tmp_path: Path) -> None:
    path = write(tmp_path, "- {name: a, command: 'true'}\n- {name: b, command: 'false'}\n")
    assert [e.spec.name for e in load_deployment_file(path)] == ["a", "b"]


def test_malformed_yaml_says_the_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        name: etl
        queue: etl
        parameters: {day: 1
        retries: 2
        """,
    )
    with pytest.raises(InputError) as info:
        load_deployment_file(path)
    assert info.value.message.startswith(f"{path}:4:")
    assert "not valid YAML" in info.value.message


def test_unknown_field_says_line_and_field(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        name: etl
        queue: etl
        command: "true"
        paramters: {a: 1}
        """,
    )
    with pytest.raises(InputError) as info:
        load_deployment_file(path)
    assert info.value.message == f"{path}:4: paramters: Extra inputs are not permitted"
    assert info.value.hint is not None and "parameters" in info.value.hint


def test_wrong_type_in_a_list_entry_says_the_path(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        deployments:
          - name: a
            command: "true"
          - name: b
            command: "true"
            retries: lots
        """,
    )
    with pytest.raises(InputError) as info:
        load_deployment_file(path)
    assert info.value.message.startswith(f"{path}:6: deployments[1].retries: ")
    assert "integer" in info.value.message


def test_nested_wrong_value_points_at_its_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        name: a
        command: "true"
        env:
          OK: "1"
          BAD: [1, 2]
        """,
    )
    with pytest.raises(InputError) as info:
        load_deployment_file(path)
    assert info.value.message.startswith(f"{path}:5: env.BAD: ")


def test_missing_target_points_at_the_entry(tmp_path: Path) -> None:
    path = write(tmp_path, "deployments:\n  - name: a\n  - name: b\n    command: x\n")
    with pytest.raises(InputError) as info:
        load_deployment_file(path)
    assert info.value.message == (
        f"{path}:2: deployments[0]: give exactly one of 'entrypoint' or 'command'"
    )


def test_several_problems_are_counted(tmp_path: Path) -> None:
    path = write(tmp_path, "name: a\ncommand: x\nretries: -1\ntimeout_seconds: 0\n")
    with pytest.raises(InputError, match=r"\(and 1 more problem\)"):
        load_deployment_file(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "expected a deployment"),
        ("just a string\n", "expected a deployment"),
        ("deployments: []\n", "'deployments' must be a non-empty list"),
        ("deployments: [{name: a, command: x}]\nextra: 1\n", "unknown top-level field 'extra'"),
    ],
)
def test_file_shape_errors(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(InputError, match=message) as info:
        load_deployment_file(path)
    assert str(path) in info.value.message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read"):
        load_deployment_file(tmp_path / "nope.yaml")


# --------------------------------------------------------------------------- entrypoints


def test_entrypoint_checks(tmp_path: Path) -> None:
    flows = tmp_path / "flows"
    flows.mkdir()
    (flows / "etl.py").write_text(
        "import os\nfrom x import helper as alias\n\n"
        "def main(): ...\nasync def amain(): ...\nclass Flow: ...\nvalue = 1\n"
    )
    for func in ("main", "amain", "Flow", "Flow.run", "value", "alias", "os"):
        check_entrypoint(f"flows/etl.py:{func}", tmp_path)
    check_entrypoint(f"{flows / 'etl.py'}:main", Path("/"))  # absolute path
    check_entrypoint("package.module:func", tmp_path)  # modules resolve where the flow runs

    with pytest.raises(InputError, match="defines no function 'nope'") as info:
        check_entrypoint("flows/etl.py:nope", tmp_path)
    assert info.value.hint is not None and "--no-check" in info.value.hint
    with pytest.raises(InputError, match="does not exist"):
        check_entrypoint("flows/missing.py:main", tmp_path)

    (flows / "broken.py").write_text("def main(:\n")
    with pytest.raises(InputError, match="syntax error at line 1"):
        check_entrypoint("flows/broken.py:main", tmp_path)

    (flows / "star.py").write_text("from elsewhere import *\n")
    check_entrypoint("flows/star.py:anything", tmp_path)


def test_the_example_deployment_file_is_valid() -> None:
    path = Path(__file__).parents[2] / "examples" / "deployment.yaml"
    entries = load_deployment_file(path)
    assert [e.spec.name for e in entries] == ["hello", "hello-command"]
    for entry in entries:
        if entry.spec.entrypoint is not None:
            check_entrypoint(entry.spec.entrypoint, path.parent / (entry.spec.working_dir or "."))


def _alias_bomb(levels: int) -> str:
    """A few hundred bytes whose aliases expand to 10**levels strings."""
    lines = ['l0: &l0 ["lol"]']
    for n in range(1, levels + 1):
        lines.append(f"l{n}: &l{n} [{', '.join([f'*l{n - 1}'] * 10)}]")
    return "\n".join(
        ["name: bomb", "queue: q", "command: ['true']", "parameters:"]
        + [f"  {line}" for line in lines]
    )


def test_an_alias_bomb_is_refused_before_it_is_expanded(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(_alias_bomb(6))  # 10**6 values; 9 levels would hang and eat the memory
    assert len(path.read_bytes()) < 1024
    with pytest.raises(InputError, match=r"aliases expand to more than 100,000 values"):
        load_deployment_file(path)


def test_a_recursive_alias_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "loop.yaml"
    path.write_text("name: loop\nqueue: q\ncommand: ['true']\nparameters: &p {self: *p}\n")
    with pytest.raises(InputError, match="recursive"):
        load_deployment_file(path)


def test_shared_values_through_aliases_still_work(tmp_path: Path) -> None:
    path = tmp_path / "shared.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            - &etl {name: a, queue: q, command: ["true"], tags: &tags [etl, nightly]}
            - {<<: *etl, name: b}
            - {<<: *etl, name: c, tags: *tags}
            """
        )
    )
    entries = load_deployment_file(path)
    assert [(e.spec.name, e.spec.tags) for e in entries] == [
        ("a", ["etl", "nightly"]),
        ("b", ["etl", "nightly"]),
        ("c", ["etl", "nightly"]),
    ]
