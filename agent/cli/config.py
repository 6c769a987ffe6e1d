"""`agent config …`: show the settings and where they came from; edit the TOML file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from agent.cli.context import CliState, state_of
from agent.cli.output import info, out, say, table, text, warn
from agent.config import (
    SETTINGS,
    SETTINGS_BY_KEY,
    Source,
    mask,
    read_config_file,
    set_in_file,
)
from agent.errors import ConfigError

app = typer.Typer(
    help="Settings: flags > environment (AGENT_*) > config file > defaults.", no_args_is_help=True
)

SOURCE_STYLES = {
    Source.DEFAULT: "dim",
    Source.FILE: "cyan",
    Source.ENV: "yellow",
    Source.FLAG: "green",
}


def _key(raw: str) -> str:
    return raw.strip().lower().replace("-", "_")


@app.command("view")
def view(
    ctx: typer.Context,
    show_sources: Annotated[
        bool, typer.Option("--show-sources", help="Say where each value came from.")
    ] = False,
) -> None:
    """Print every setting (secrets masked)."""
    state = state_of(ctx)
    settings = state.settings()
    columns = ["key", "value", "source"] if show_sources else ["key", "value"]
    rows = table(*columns)
    rows.caption = f"config file: {state.config_path()}"
    entries = [("home", str(settings.home), state.home_source())]
    entries += [(s.key, settings.shown(s.key), settings.source_of(s.key)) for s in SETTINGS]
    for key, value, source in entries:
        cells = [key, value]
        if show_sources:
            rows.add_row(*cells, text(source.value, style=SOURCE_STYLES[source]))
        else:
            rows.add_row(*cells)
    out().print(rows)


def _write(path: Path, key: str, value: str | None) -> None:
    try:
        set_in_file(path, key, value)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from exc


def _warn_if_overridden(state: CliState, key: str) -> None:
    setting = SETTINGS_BY_KEY[key]
    if state.env.get(setting.env):
        warn(f"${setting.env} is set and overrides the config file")


@app.command("set")
def set_(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="Setting name, e.g. limit (see agent config view).")],
    value: Annotated[str, typer.Argument(help="The new value.")],
) -> None:
    """Write one setting to the config file (validated first)."""
    state = state_of(ctx)
    path = state.config_path()
    name = _key(key)
    if value == "":
        raise ConfigError(
            f"config set: empty value for {name!r}", hint=f"to remove it: agent config unset {name}"
        )
    _write(path, name, value)
    stored = read_config_file(path)[name]
    shown = mask(str(stored)) if SETTINGS_BY_KEY[name].secret else repr(stored)
    say(f"{name} = {shown} in {path}")
    _warn_if_overridden(state, name)


@app.command("unset")
def unset(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="Setting name.")],
) -> None:
    """Remove one setting from the config file (back to the default)."""
    state = state_of(ctx)
    path = state.config_path()
    name = _key(key)
    was_set = name in read_config_file(path)
    _write(path, name, None)
    if was_set:
        say(f"removed {name} from {path}")
    else:
        info(f"{name} was not set in {path}")
