"""What the root command hands down to every subcommand: how to build the one Settings object."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer

from agent.config import CONFIG_FILE_NAME, Settings, Source, load_settings, resolve_home


@dataclass
class CliState:
    """The global options, and the Settings built from them on first use.

    Settings are built lazily so `agent --help` and `agent config set` work even when the
    config file has a bad value in it.
    """

    flags: dict[str, Any] = field(default_factory=dict)
    home: Path | None = None
    config_file: Path | None = None
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    _settings: Settings | None = None

    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(
                flags=self.flags, env=self.env, home=self.home, config_file=self.config_file
            )
        return self._settings

    def config_path(self) -> Path:
        """The TOML file settings are read from and `config set` writes to."""
        if self.config_file is not None:
            return self.config_file
        return resolve_home(self.home, self.env) / CONFIG_FILE_NAME

    def home_source(self) -> Source:
        if self.home is not None:
            return Source.FLAG
        if self.env.get("AGENT_HOME"):
            return Source.ENV
        return Source.DEFAULT


def state_of(ctx: typer.Context) -> CliState:
    obj = ctx.find_root().obj
    if not isinstance(obj, CliState):  # a subcommand app invoked on its own (tests)
        obj = CliState()
        ctx.find_root().obj = obj
    return obj


def settings_of(ctx: typer.Context) -> Settings:
    return state_of(ctx).settings()
