"""Turning what the user typed into values: ``k=v`` pairs, UUIDs and deployment files.

Nothing here talks to the server; every problem becomes an :class:`~agent.errors.InputError`
that says where it is (the flag, or the file, line and field).
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from uuid import UUID

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from agent.errors import InputError
from agent.models import BundleSource, Collision, GitSource, ScheduleCreate, check_source_target

if TYPE_CHECKING:
    # PyYAML is imported for deployment files only: `agent start` never reads one.
    import yaml

JSON_LOOKING = ("{", "[", '"')


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_value(raw: str, where: str) -> Any:
    """A JSON value when ``raw`` parses as JSON (``3``, ``true``, ``"a"``), else the string.

    Text that starts like a JSON object, array or string but does not parse is an error rather
    than a silent string: ``{"a": 1`` is far more likely a typo than a value.
    """
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except ValueError as exc:
        if raw.lstrip().startswith(JSON_LOOKING):
            raise InputError(
                f"{where}: {raw!r} looks like JSON but does not parse: {exc}",
                hint="quote the whole pair for your shell, e.g. --param 'x={\"a\": 1}'",
            ) from exc
        return raw


def split_pair(item: str, flag: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise InputError(f"{flag} {item!r}: expected KEY=VALUE", hint=f"e.g. {flag} n=3")
    return key, value


def parse_pairs(items: Iterable[str], flag: str, *, json_values: bool = True) -> dict[str, Any]:
    """``["n=3", "who=world"]`` → ``{"n": 3, "who": "world"}``; the last of a repeated key wins.

    With ``json_values=False`` every value stays a string (for ``--env``).
    """
    result: dict[str, Any] = {}
    for item in items:
        key, value = split_pair(item, flag)
        result[key] = parse_value(value, f"{flag} {key}") if json_values else value
    return result


def parse_uuid(value: str, what: str, things: str, list_command: str) -> UUID:
    """``parse_uuid("abc", "work-queue", "queues", "agent work-queue ls")``."""
    try:
        return UUID(value)
    except ValueError:
        raise InputError(
            f"{value!r} is not a {what} id (a UUID); list {things} with {list_command}"
        ) from None


def looks_like_uuid(value: str) -> bool:
    try:
        UUID(value)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------- deployment specs


def _split_command(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"cannot split the command: {exc}") from exc
    return value


def _stringify_values(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: json.dumps(v) if isinstance(v, bool) else str(v) if isinstance(v, int | float) else v
            for k, v in value.items()
        }
    return value


class UploadSource(BaseModel):
    """``source: {upload: DIR}`` in a deployment file (``--upload DIR``): packed and uploaded by
    the CLI, then sent to the server as the bundle's digest."""

    model_config = ConfigDict(extra="forbid")

    upload: str = Field(min_length=1, description="directory to pack (relative to the file)")


def check_concurrency_limit(value: int | None) -> int | None:
    if value is not None and value < 1:
        raise ValueError(
            f"must be 1 or more (got {value}); to hold every run back, pause the queue; "
            "for no limit, leave it out"
        )
    return value


class DeploymentSpec(BaseModel):
    """One deployment as the user writes it: the queue by name or id, the command as a string."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    queue: str | None = Field(default=None, min_length=1)
    entrypoint: str | None = None
    command: Annotated[list[str] | None, BeforeValidator(_split_command)] = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list)
    runner: str | None = None  # the agent's default runner
    runner_options: dict[str, Any] = Field(default_factory=dict)
    env: Annotated[dict[str, str], BeforeValidator(_stringify_values)] = Field(default_factory=dict)
    working_dir: str | None = None
    timeout_seconds: float | None = Field(default=None, gt=0)
    retries: int = Field(default=0, ge=0)
    retry_delay_seconds: float = Field(default=0, ge=0)
    concurrency_limit: Annotated[int | None, AfterValidator(check_concurrency_limit)] = None
    collision_strategy: Collision = Collision.ENQUEUE
    schedules: list[ScheduleCreate] | None = None
    source: GitSource | BundleSource | UploadSource | None = None

    @model_validator(mode="after")
    def _one_target(self) -> DeploymentSpec:
        if (self.entrypoint is None) == (self.command is None):
            raise ValueError("give exactly one of 'entrypoint' or 'command'")
        if self.entrypoint is not None and ":" not in self.entrypoint:
            raise ValueError(
                "entrypoint must look like 'path/to/file.py:func' or 'package.module:func'"
            )
        if self.command is not None and not self.command:
            raise ValueError("command must not be empty")
        if self.source is not None:
            check_source_target(self.entrypoint, self.working_dir)
        return self


FIELDS = tuple(DeploymentSpec.model_fields)

# How each field is spelled on the command line, for errors about flags.
FLAG_NAMES = {
    "name": "--name",
    "queue": "--queue",
    "entrypoint": "ENTRYPOINT",
    "command": "--command",
    "parameters": "--param",
    "tags": "--tag",
    "runner": "--runner",
    "runner_options": "--runner-option",
    "env": "--env",
    "working_dir": "--workdir",
    "timeout_seconds": "--timeout",
    "retries": "--retries",
    "retry_delay_seconds": "--retry-delay",
    "concurrency_limit": "--concurrency-limit",
    "collision_strategy": "--collision",
    "schedules": "--cron/--interval/--at",
    "source": "--git",
}


def _loc_path(loc: Sequence[int | str]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _message(error: Any) -> str:
    msg = str(error["msg"])
    return msg.removeprefix("Value error, ")


def invalid_input(exc: ValidationError) -> str:
    """One line naming each field pydantic refused."""
    problems = [
        f"{_loc_path(e['loc'])}: {_message(e)}" if e["loc"] else _message(e) for e in exc.errors()
    ]
    return f"invalid {exc.title}: " + "; ".join(problems)


class DeploymentLimits(BaseModel):
    """What `agent deployment update` changes, checked as `create` checks it."""

    model_config = ConfigDict(extra="forbid")

    concurrency_limit: Annotated[int | None, AfterValidator(check_concurrency_limit)] = None
    collision_strategy: Collision = Collision.ENQUEUE


def invalid_flags(exc: ValidationError, what: str) -> str:
    """One line naming each flag pydantic refused."""
    problems = []
    for error in exc.errors():
        loc = error["loc"]
        flag = FLAG_NAMES.get(str(loc[0]), str(loc[0])) if loc else ""
        problems.append(f"{flag}: {_message(error)}" if flag else _message(error))
    return f"{what}: " + "; ".join(problems)


def spec_from_flags(values: dict[str, Any]) -> DeploymentSpec:
    """Validate a deployment given as flags; errors name the flag."""
    try:
        return DeploymentSpec.model_validate(values)
    except ValidationError as exc:
        raise InputError(
            invalid_flags(exc, "invalid deployment"), hint="see agent deployment create --help"
        ) from None


@dataclass(frozen=True)
class FileDeployment:
    """A deployment read from a file, with where it came from (for later errors)."""

    spec: DeploymentSpec
    where: str  # "deploy.yaml:3 (deployments[0])"


def _node_at(node: yaml.Node | None, loc: Sequence[int | str]) -> yaml.Node | None:
    """The YAML node a pydantic error location points at, as deep as it can be followed."""
    import yaml

    for depth, part in enumerate(loc):
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if key_node.value == part:
                    node = key_node if depth == len(loc) - 1 else value_node
                    break
            else:
                return node
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                return node
            node = node.value[part]
        else:
            return node
    return node


def _line(node: yaml.Node | None) -> int | None:
    return node.start_mark.line + 1 if node is not None else None


# Values a deployment file may hold once its aliases are expanded. Aliases are shared, not
# copied, when the file is read, but everything after (validation, the JSON sent to the server)
# walks the expanded tree: nine levels of ten aliases is a 1 KiB file and 10**9 values ("billion
# laughs"). Real files, shared defaults included, hold a few hundred.
MAX_YAML_VALUES = 100_000


def _check_expanded_size(root: yaml.Node | None, path: Path) -> None:
    """Refuse a file whose aliases expand beyond :data:`MAX_YAML_VALUES` values, or into
    themselves; counted on the composed nodes, each shared node once, so it is quick."""
    import yaml

    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise InputError(
                f"{path}:{_line(node)}: an alias refers to the value it is in (a recursive "
                "structure)",
                hint="a deployment file cannot hold a recursive structure",
            )
        open_nodes.add(key)
        total = 1
        if isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            total += sum(size(item) for item in node.value)
        open_nodes.discard(key)
        if total > MAX_YAML_VALUES:
            raise InputError(
                f"{path}: its aliases expand to more than {MAX_YAML_VALUES:,} values "
                "(an alias bomb?)",
                hint="use fewer nested aliases (*name), or write the values out",
            )
        sizes[key] = total
        return total

    if root is not None:
        try:
            size(root)
        except RecursionError:
            raise InputError(f"{path}: nested too deeply") from None


def load_deployment_file(path: Path) -> list[FileDeployment]:
    """Read one deployment, a list, or a mapping with ``deployments:`` from a YAML file."""
    import yaml

    try:
        text = path.read_text()
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        _check_expanded_size(root, path)
        data = yaml.safe_load(text)
    except RecursionError:
        raise InputError(f"{path}: nested too deeply") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        raise InputError(
            f"{where}: not valid YAML: {problem}", hint="fix the file and try again"
        ) from None

    prefix: list[int | str] = []
    if isinstance(data, dict) and "deployments" in data:
        extra = sorted(set(data) - {"deployments"})
        if extra:
            raise InputError(
                f"{path}:{_line(_node_at(root, [extra[0]]))}: unknown top-level field "
                f"{extra[0]!r} next to 'deployments'",
            )
        entries, prefix = data["deployments"], ["deployments"]
    elif isinstance(data, list):
        entries = data
    elif isinstance(data, dict):
        entries, prefix = [data], []
    else:
        raise InputError(
            f"{path}: expected a deployment (a mapping) or a list under 'deployments:'",
            hint="fields: " + ", ".join(FIELDS),
        )
    if not isinstance(entries, list) or not entries:
        raise InputError(f"{path}: 'deployments' must be a non-empty list")

    single = isinstance(data, dict) and not prefix
    result = []
    for index, entry in enumerate(entries):
        base: list[int | str] = [] if single else [*prefix, index]
        try:
            spec = DeploymentSpec.model_validate(entry)
        except ValidationError as exc:
            error = exc.errors()[0]
            loc = [*base, *error["loc"]]
            line = _line(_node_at(root, loc))
            field = _loc_path(loc)
            where = f"{path}:{line}" if line else str(path)
            more = len(exc.errors()) - 1
            raise InputError(
                f"{where}: {field + ': ' if field else ''}{_message(error)}"
                + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""),
                hint="deployment fields: " + ", ".join(FIELDS),
            ) from None
        line = _line(_node_at(root, base))
        label = f" ({_loc_path(base)})" if base else ""
        result.append(FileDeployment(spec, f"{path}:{line}{label}"))
    return result
