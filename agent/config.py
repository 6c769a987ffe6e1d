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
    """One URL, or several (a list, or comma-separated) of replicas of one server: the agent
    and the CLI use one and move to the next when it cannot be reached. Kept comma-joined."""
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    urls = [str(item).strip().rstrip("/") for item in items if str(item).strip()]
    if not urls:
        raise ValueError("must name at least one URL")
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"{url!r} must start with http:// or https://")
    return ",".join(dict.fromkeys(urls))


def _database_url(value: Any) -> str | None:
    text = str(value).strip()
    if not text:
        return None
    if not text.startswith(("postgresql://", "postgresql+psycopg://", "postgres://", "sqlite:")):
        raise ValueError(
            "must be a postgresql+psycopg://user@host:5432/db URL (or sqlite:////path/to.db)"
        )
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


def _setting(default: Any, parse: Callable[[Any], Any], help: str, *, secret: bool = False) -> Any:
    """A field of :class:`Settings` that is a setting: its default, how a given value is parsed
    (file, environment, flag) and what it means. Declared once, there; :data:`SETTINGS` is read
    from the fields."""
    return field(
        default=default, repr=not secret, metadata={"parse": parse, "help": help, "secret": secret}
    )


@dataclass(frozen=True)
class Settings:
    """Every setting of the agent, its CLI and the server: the default, the parser and the
    meaning of each, declared once here (:func:`_setting`); built once by :func:`load_settings`."""

    home: Path = field(default_factory=lambda: Path("~/.agent").expanduser())
    api_url: str = _setting(
        "http://127.0.0.1:4200/api",
        _api_url,
        "work-queue API the CLI and agent talk to; several replicas' URLs comma-separated",
    )
    api_key: str | None = _setting(
        None, _optional_str, "API key sent as 'Authorization: Bearer'", secret=True
    )
    api_auth_string: str | None = _setting(
        None,
        _optional_str,
        "USER:PASSWORD sent as basic auth (a Prefect server's PREFECT_SERVER_API_AUTH_STRING)",
        secret=True,
    )
    backend: str = _setting(
        "auto", _choice("auto", "native", "prefect"), "kind of server at api_url"
    )
    log_level: str = _setting(
        "info", _choice("debug", "info", "warning", "error"), "agent log level"
    )
    log_format: str = _setting(
        "auto", _choice("auto", "json", "console"), "auto: JSON unless a TTY"
    )
    heartbeat_seconds: float = _setting(5.0, _positive_float, "seconds between agent heartbeats")
    claim_wait_seconds: float = _setting(
        10.0, _positive_float, "long-poll bound of one claim request"
    )
    start_lead_seconds: float = _setting(
        0.5, _non_negative_float, "claim scheduled runs this early, so they start on time"
    )
    # Prefect's worker default (PREFECT_WORKER_PREFETCH_SECONDS).
    prefetch_seconds: float = _setting(
        10.0,
        _non_negative_float,
        "Prefect servers: claim scheduled runs this early and start their engine ahead",
    )
    # A Prefect work pool served the way `prefect worker start --pool` does (else: one queue).
    pool: str | None = _setting(
        None,
        _optional_str,
        "Prefect servers: serve this work pool (agent start --pool), not one queue by id",
    )
    work_queues: tuple[str, ...] = _setting(
        (), _names, "Prefect servers: the pool's queues to serve, comma-separated (all when empty)"
    )
    cancel_grace_seconds: float = _setting(10.0, _non_negative_float, "interrupt → terminate grace")
    cancel_poll_seconds: float = _setting(
        1.0, _positive_float, "how often the agent checks for cancels"
    )
    drain_timeout_seconds: float = _setting(
        30.0, _non_negative_float, "on SIGTERM, let runs finish this long"
    )
    startup_timeout_seconds: float = _setting(
        30.0, _non_negative_float, "retry an unreachable server this long"
    )
    request_timeout_seconds: float = _setting(30.0, _positive_float, "timeout of one API request")
    limit: int = _setting(10, _positive_int, "runs one agent executes at once")
    server_host: str = _setting("127.0.0.1", str, "address `agent server start` listens on")
    server_port: int = _setting(4200, _port, "port `agent server start` listens on")
    lease_seconds: float = _setting(
        DEFAULT_LEASE_SECONDS, _positive_float, "server: resolve a silent agent's runs after this"
    )
    schedule_horizon_seconds: float = _setting(
        86400.0, _positive_float, "server: make scheduled runs this far ahead"
    )
    schedule_max_runs: int = _setting(
        100, _positive_int, "server: at most this many runs ahead per schedule"
    )
    late_after_seconds: float = _setting(
        15.0, _positive_float, "server: a due run not started by then is Late"
    )
    missed_after_seconds: float = _setting(
        300.0, _positive_float, "server: older scheduled times are missed"
    )
    # Secret: a URL may carry the database password.
    database_url: str | None = _setting(
        None,
        _database_url,
        "server: its database, postgresql+psycopg://user@host:5432/db (default: SQLite in home)",
        secret=True,
    )
    webhook_allow_private: bool = _setting(
        False, _bool, "server: let webhooks target loopback, private and link-local addresses (off)"
    )
    bundle_max_size: int = _setting(
        100 * 1024 * 1024, parse_size, "server: largest uploaded bundle it stores (100M)"
    )
    bundle_retention: float = _setting(
        7 * 86400.0,
        _positive_float,
        "server: seconds an uploaded bundle no deployment or unfinished run names is kept",
    )
    source_max_idle: float = _setting(
        7 * 86400.0,
        _positive_float,
        "seconds a git mirror or bundle may go unused before `agent sources prune` removes it",
    )
    health_host: str = _setting(
        "127.0.0.1", str, "address the agent's /healthz and /metrics listen on"
    )
    health_port: int | None = _setting(
        None, _optional(_port), "port of the agent's /healthz and /metrics (off)"
    )
    max_cpu_percent: float | None = _setting(
        None, _optional(_percent), "stop claiming while host CPU is above"
    )
    min_free_memory: int | None = _setting(
        None, _optional(parse_size), "stop claiming while less is free (500M)"
    )
    max_load: float | None = _setting(
        None, _optional(_positive_float), "stop claiming while the 1-min load is above"
    )
    secret_patterns: tuple[str, ...] = _setting(
        DEFAULT_SECRET_PATTERNS, _patterns, "env names whose values are masked (comma-separated)"
    )
    sources: Mapping[str, Source] = field(default_factory=dict, compare=False, repr=False)

    @property
    def api_urls(self) -> tuple[str, ...]:
        """``api_url``'s URLs, in the order they are tried."""
        return tuple(self.api_url.split(","))

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


#: Every setting, in the order `config view` shows them.
SETTINGS: tuple[Setting, ...] = tuple(
    Setting(f.name, f.metadata["parse"], f.metadata["help"], f.metadata["secret"])
    for f in fields(Settings)
    if "parse" in f.metadata
)
SETTINGS_BY_KEY = {s.key: s for s in SETTINGS}


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
            # A secret's value is not echoed: a database URL may carry a password.
            f"{where}: bad value {'(hidden)' if setting.secret else repr(value)} "
            f"for {setting.key}: {exc}",
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
