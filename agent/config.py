"""Settings: one frozen object, read in one place.

Precedence, highest first: command-line flags > environment (``AGENT_*``) > the TOML file
(``$AGENT_HOME/config.toml`` or ``--config``) > defaults. :func:`load_settings` also records where
each value came from so ``agent config view --show-sources`` can say it.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from pathlib import Path
from typing import Any
from uuid import UUID

import tomli_w

from agent.errors import ConfigError
from agent.models import DEFAULT_LEASE_SECONDS
from agent.private import private_dir, write_private
from agent.redaction import DEFAULT_SECRET_PATTERNS, Redactor

CONFIG_FILE_NAME = "config.toml"


class Source(StrEnum):
    DEFAULT = "default"
    FILE = "file"
    ENV = "env"
    FLAG = "flag"


def _positive_float(value: Any) -> float:
    number = float(value)
    if number <= 0:
        raise ValueError("must be greater than 0")
    return number


def _non_negative_float(value: Any) -> float:
    number = float(value)
    if number < 0:
        raise ValueError("must be 0 or more")
    return number


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError("must be a whole number")
    number = int(value)
    if number < 1:
        raise ValueError("must be 1 or more")
    return number


def _port(value: Any) -> int:
    number = int(value)
    if not 0 < number < 65536:
        raise ValueError("must be between 1 and 65535")
    return number


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = str(value).lower()
        if text not in choices:
            raise ValueError(f"must be one of: {', '.join(choices)}")
        return text

    return parse


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false")


def _optional_str(value: Any) -> str | None:
    text = str(value)
    return text or None


def _optional(parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``parse``, but an empty value (or "off") means the setting is off (None)."""

    def parse_optional(value: Any) -> Any:
        if value is None or str(value).strip().lower() in ("", "off", "none"):
            return None
        return parse(value)

    return parse_optional


def _percent(value: Any) -> float:
    number = float(value)
    if not 0 < number <= 100:
        raise ValueError("must be a percentage above 0, at most 100")
    return number


_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>[KMGT]?)(?:I?B)?", re.IGNORECASE)


def parse_size(value: Any) -> int:
    """Bytes from ``1048576``, ``500M``, ``1.5G``, ``2GiB`` (K/M/G/T are powers of 1024)."""
    if isinstance(value, bool):
        raise ValueError("must be a size such as 500M or 2G")
    match = _SIZE.fullmatch(str(value).strip())
    if match is None:
        raise ValueError("must be a size such as 500M or 2G (bytes if no unit)")
    number = float(match["number"]) * _SIZE_UNITS[match["unit"].upper()]
    if number < 1:
        raise ValueError("must be more than 0 bytes")
    return int(number)


def _patterns(value: Any) -> tuple[str, ...]:
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    patterns = tuple(str(item).strip() for item in items if str(item).strip())
    if not patterns:
        raise ValueError("must name at least one pattern, e.g. *TOKEN*,*SECRET*")
    return patterns


def _names(value: Any) -> tuple[str, ...]:
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    return tuple(dict.fromkeys(str(item).strip() for item in items if str(item).strip()))


def _api_url(value: Any) -> str:
    text = str(value).rstrip("/")
    if not text.startswith(("http://", "https://")):
        raise ValueError("must start with http:// or https://")
    return text


@dataclass(frozen=True)
class Setting:
    """How one setting is named, parsed and shown."""

    key: str
    parse: Callable[[Any], Any]
    help: str
    secret: bool = False

    @property
    def env(self) -> str:
        return f"AGENT_{self.key.upper()}"


SETTINGS: tuple[Setting, ...] = (
    Setting("api_url", _api_url, "work-queue API the CLI and agent talk to"),
    Setting("api_key", _optional_str, "API key sent as 'Authorization: Bearer'", secret=True),
    Setting(
        "api_auth_string",
        _optional_str,
        "USER:PASSWORD sent as basic auth (a Prefect server's PREFECT_SERVER_API_AUTH_STRING)",
        secret=True,
    ),
    Setting("backend", _choice("auto", "native", "prefect"), "kind of server at api_url"),
    Setting("log_level", _choice("debug", "info", "warning", "error"), "agent log level"),
    Setting("log_format", _choice("auto", "json", "console"), "auto: JSON unless a TTY"),
    Setting("heartbeat_seconds", _positive_float, "seconds between agent heartbeats"),
    Setting("claim_wait_seconds", _positive_float, "long-poll bound of one claim request"),
    Setting(
        "start_lead_seconds",
        _non_negative_float,
        "claim scheduled runs this early, so they start on time",
    ),
    Setting(
        "prefetch_seconds",
        _non_negative_float,
        "Prefect servers: claim scheduled runs this early and start their engine ahead",
    ),
    Setting(
        "pool",
        _optional_str,
        "Prefect servers: serve this work pool (agent start --pool), not one queue by id",
    ),
    Setting(
        "work_queues",
        _names,
        "Prefect servers: the pool's queues to serve, comma-separated (all when empty)",
    ),
    Setting("cancel_grace_seconds", _non_negative_float, "interrupt → terminate grace"),
    Setting("drain_timeout_seconds", _non_negative_float, "on SIGTERM, let runs finish this long"),
    Setting("cancel_poll_seconds", _positive_float, "how often the agent checks for cancels"),
    Setting(
        "startup_timeout_seconds", _non_negative_float, "retry an unreachable server this long"
    ),
    Setting("request_timeout_seconds", _positive_float, "timeout of one API request"),
    Setting("limit", _positive_int, "runs one agent executes at once"),
    Setting("server_host", str, "address `agent server start` listens on"),
    Setting("server_port", _port, "port `agent server start` listens on"),
    Setting("lease_seconds", _positive_float, "server: resolve a silent agent's runs after this"),
    Setting(
        "schedule_horizon_seconds", _positive_float, "server: make scheduled runs this far ahead"
    ),
    Setting(
        "schedule_max_runs", _positive_int, "server: at most this many runs ahead per schedule"
    ),
    Setting("late_after_seconds", _positive_float, "server: a due run not started by then is Late"),
    Setting("missed_after_seconds", _positive_float, "server: older scheduled times are missed"),
    Setting(
        "webhook_allow_private",
        _bool,
        "server: let webhooks target loopback, private and link-local addresses (off)",
    ),
    Setting("bundle_max_size", parse_size, "server: largest uploaded bundle it stores (100M)"),
    Setting(
        "source_max_idle",
        _positive_float,
        "seconds a git mirror or bundle may go unused before `agent sources prune` removes it",
    ),
    Setting("health_host", str, "address the agent's /healthz and /metrics listen on"),
    Setting("health_port", _optional(_port), "port of the agent's /healthz and /metrics (off)"),
    Setting("max_cpu_percent", _optional(_percent), "stop claiming while host CPU is above"),
    Setting("min_free_memory", _optional(parse_size), "stop claiming while less is free (500M)"),
    Setting("max_load", _optional(_positive_float), "stop claiming while the 1-min load is above"),
    Setting("secret_patterns", _patterns, "env names whose values are masked (comma-separated)"),
)
SETTINGS_BY_KEY = {s.key: s for s in SETTINGS}


@dataclass(frozen=True)
class Settings:
    home: Path = field(default_factory=lambda: Path("~/.agent").expanduser())
    api_url: str = "http://127.0.0.1:4200/api"
    api_key: str | None = field(default=None, repr=False)
    api_auth_string: str | None = field(default=None, repr=False)
    backend: str = "auto"
    log_level: str = "info"
    log_format: str = "auto"
    heartbeat_seconds: float = 5.0
    claim_wait_seconds: float = 10.0
    start_lead_seconds: float = 0.5
    # Prefect's worker default (PREFECT_WORKER_PREFETCH_SECONDS).
    prefetch_seconds: float = 10.0
    # A Prefect work pool served the way `prefect worker start --pool` does (else: one queue).
    pool: str | None = None
    work_queues: tuple[str, ...] = ()
    cancel_grace_seconds: float = 10.0
    cancel_poll_seconds: float = 1.0
    drain_timeout_seconds: float = 30.0
    startup_timeout_seconds: float = 30.0
    request_timeout_seconds: float = 30.0
    limit: int = 10
    server_host: str = "127.0.0.1"
    server_port: int = 4200
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    schedule_horizon_seconds: float = 86400.0
    schedule_max_runs: int = 100
    late_after_seconds: float = 15.0
    missed_after_seconds: float = 300.0
    webhook_allow_private: bool = False
    bundle_max_size: int = 100 * 1024 * 1024
    source_max_idle: float = 7 * 86400.0
    health_host: str = "127.0.0.1"
    health_port: int | None = None
    max_cpu_percent: float | None = None
    min_free_memory: int | None = None
    max_load: float | None = None
    secret_patterns: tuple[str, ...] = DEFAULT_SECRET_PATTERNS
    sources: Mapping[str, Source] = field(default_factory=dict, compare=False, repr=False)

    @property
    def config_file(self) -> Path:
        return self.home / CONFIG_FILE_NAME

    def source_of(self, key: str) -> Source:
        return self.sources.get(key, Source.DEFAULT)

    def shown(self, key: str) -> str:
        """The value as `config view` prints it: secrets masked."""
        value = getattr(self, key)
        if value is None:
            return ""
        if SETTINGS_BY_KEY[key].secret:
            return mask(str(value))
        if isinstance(value, tuple):
            return ",".join(value)
        return str(value)


def settings_redactor(settings: Settings, env: Mapping[str, str]) -> Redactor:
    """Secrets of this process: every secret setting, and secret-looking values of ``env``."""
    secrets = [getattr(settings, s.key) for s in SETTINGS if s.secret]
    return Redactor.build(settings.secret_patterns, env, secrets)


def mask(secret: str) -> str:
    return "********" if len(secret) <= 8 else f"{secret[:2]}******{secret[-2:]}"


def default_agent_name(queues: Sequence[str]) -> str:
    """HOSTNAME-<queue id's first 8 digits>: agents on one host serving different queues get
    names of their own without thinking about it (a name is an agent's identity: its runs,
    lease and fence; a second live agent under one name is refused).

    A queue given by name stands for itself; several queues are named by a digest of the
    list, in order (the same queues in another order are another agent's).
    """
    if len(queues) > 1:
        digest = hashlib.sha256("\n".join(queues).encode()).hexdigest()[:8]
        return f"{socket.gethostname()}-{digest}"
    try:
        return f"{socket.gethostname()}-{UUID(queues[0]).hex[:8]}"
    except ValueError:
        return f"{socket.gethostname()}-{queues[0]}"


def resolve_home(flag: str | os.PathLike[str] | None, env: Mapping[str, str]) -> Path:
    raw = flag or env.get("AGENT_HOME") or "~/.agent"
    return Path(raw).expanduser()


def _parse(setting: Setting, value: Any, where: str) -> Any:
    try:
        return setting.parse(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"{where}: bad value {value!r} for {setting.key}: {exc}",
            hint=f"{setting.key}: {setting.help}",
        ) from exc


def unknown_key_error(key: str, where: str) -> ConfigError:
    return ConfigError(
        f"{where}: unknown setting {key!r}",
        hint="valid settings: " + ", ".join(s.key for s in SETTINGS),
    )


def read_config_file(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}", hint="fix or delete the file") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    return data


def load_settings(
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    home: str | os.PathLike[str] | None = None,
    config_file: Path | None = None,
) -> Settings:
    """Build the one Settings object. ``flags`` holds only flags the user actually gave."""
    env = os.environ if env is None else env
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    home_path = resolve_home(home, env)
    path = config_file or home_path / CONFIG_FILE_NAME
    file_values = read_config_file(path)

    values: dict[str, Any] = {}
    sources: dict[str, Source] = {}
    for key, raw in file_values.items():
        if key not in SETTINGS_BY_KEY:
            raise unknown_key_error(key, str(path))
        values[key] = _parse(SETTINGS_BY_KEY[key], raw, str(path))
        sources[key] = Source.FILE
    for setting in SETTINGS:
        if setting.env in env and env[setting.env] != "":
            values[setting.key] = _parse(setting, env[setting.env], f"${setting.env}")
            sources[setting.key] = Source.ENV
    for key, raw in flags.items():
        if key not in SETTINGS_BY_KEY:
            raise unknown_key_error(key, "command line")
        values[key] = _parse(SETTINGS_BY_KEY[key], raw, f"--{key.replace('_', '-')}")
        sources[key] = Source.FLAG
    return Settings(home=home_path, sources=sources, **values)


def with_overrides(settings: Settings, **flags: Any) -> Settings:
    """A copy with command-line flags applied (only those not None), sources updated."""
    given = {k: v for k, v in flags.items() if v is not None}
    if not given:
        return settings
    parsed = {
        k: _parse(SETTINGS_BY_KEY[k], v, f"--{k.replace('_', '-')}") for k, v in given.items()
    }
    sources = dict(settings.sources) | dict.fromkeys(given, Source.FLAG)
    return replace(settings, sources=sources, **parsed)


def set_in_file(path: Path, key: str, value: str | None) -> None:
    """Set (or, with ``value=None``, remove) one key in the TOML file, validating it first."""
    if key not in SETTINGS_BY_KEY:
        raise unknown_key_error(key, "config set")
    data = read_config_file(path)
    if value is None:
        data.pop(key, None)
    else:
        parsed = _parse(SETTINGS_BY_KEY[key], value, "config set")
        if parsed is None:  # "off": TOML has no null; off is what an unset key means
            raise ConfigError(
                f"config set: {value!r} turns {key} off", hint=f"agent config unset {key}"
            )
        data[key] = parsed
    # It may hold api_key: private, like the home it normally lives in.
    private_dir(path.parent)
    write_private(path, tomli_w.dumps(data))


def setting_keys() -> list[str]:
    return [f.name for f in fields(Settings) if f.name in SETTINGS_BY_KEY]
