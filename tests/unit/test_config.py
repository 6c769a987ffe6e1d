"""Settings: layering (flags > env > file > defaults) with sources, validation, masking, and the
`agent config` commands that show and edit the TOML file."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.cli.app import app
from agent.config import (
    SETTINGS,
    Settings,
    Source,
    load_settings,
    mask,
    set_in_file,
    with_overrides,
)
from agent.errors import ConfigError

VALID_KEYS = [s.key for s in SETTINGS]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI reads os.environ: keep the developer's AGENT_* variables out of these tests."""
    import os

    for name in list(os.environ):
        if name.startswith("AGENT_"):
            monkeypatch.delenv(name)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


def write_config(home: Path, text: str) -> Path:
    path = home / "config.toml"
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- layering


def test_defaults_when_nothing_is_given(home: Path) -> None:
    settings = load_settings(env={}, home=home)
    assert settings == Settings(home=home)
    assert settings.api_url == "http://127.0.0.1:4200/api"
    assert all(settings.source_of(key) is Source.DEFAULT for key in VALID_KEYS)


def test_flags_beat_env_beat_file_beat_defaults(home: Path) -> None:
    write_config(home, 'limit = 2\nlog_level = "warning"\nheartbeat_seconds = 7\n')
    env = {"AGENT_LOG_LEVEL": "error", "AGENT_HEARTBEAT_SECONDS": "9"}
    settings = load_settings(flags={"heartbeat_seconds": "11"}, env=env, home=home)

    assert (settings.limit, settings.source_of("limit")) == (2, Source.FILE)
    assert (settings.log_level, settings.source_of("log_level")) == ("error", Source.ENV)
    assert (settings.heartbeat_seconds, settings.source_of("heartbeat_seconds")) == (
        11.0,
        Source.FLAG,
    )
    assert settings.source_of("api_url") is Source.DEFAULT


def test_flags_left_unset_do_not_override(home: Path) -> None:
    settings = load_settings(
        flags={"api_url": None}, env={"AGENT_API_URL": "http://x:1/api"}, home=home
    )
    assert settings.api_url == "http://x:1/api"
    assert settings.source_of("api_url") is Source.ENV


def test_empty_env_var_counts_as_unset(home: Path) -> None:
    write_config(home, "limit = 3\n")
    settings = load_settings(env={"AGENT_LIMIT": ""}, home=home)
    assert (settings.limit, settings.source_of("limit")) == (3, Source.FILE)


def test_home_from_env_and_config_flag(tmp_path: Path, home: Path) -> None:
    write_config(home, "limit = 4\n")
    assert load_settings(env={"AGENT_HOME": str(home)}).limit == 4
    other = tmp_path / "other.toml"
    other.write_text("limit = 5\n")
    assert load_settings(env={}, home=home, config_file=other).limit == 5


def test_with_overrides_marks_flags(home: Path) -> None:
    settings = load_settings(env={"AGENT_LIMIT": "3"}, home=home)
    changed = with_overrides(settings, limit="6", api_url=None)
    assert (changed.limit, changed.source_of("limit")) == (6, Source.FLAG)
    assert changed.source_of("api_url") is Source.DEFAULT
    assert with_overrides(settings) is settings


def test_api_url_trailing_slash_is_dropped(home: Path) -> None:
    settings = load_settings(env={"AGENT_API_URL": "http://h:1/api/"}, home=home)
    assert settings.api_url == "http://h:1/api"


# --------------------------------------------------------------------------- bad input


def test_unknown_key_in_file_lists_valid_keys(home: Path) -> None:
    path = write_config(home, "limt = 3\n")
    with pytest.raises(ConfigError) as info:
        load_settings(env={}, home=home)
    assert str(path) in info.value.message
    assert "'limt'" in info.value.message
    assert info.value.hint is not None
    assert all(key in info.value.hint for key in VALID_KEYS)


@pytest.mark.parametrize(
    ("env", "where"),
    [
        ({"AGENT_LIMIT": "0"}, "$AGENT_LIMIT"),
        ({"AGENT_LIMIT": "two"}, "$AGENT_LIMIT"),
        ({"AGENT_SERVER_PORT": "70000"}, "$AGENT_SERVER_PORT"),
        ({"AGENT_API_URL": "127.0.0.1:4200"}, "$AGENT_API_URL"),
        ({"AGENT_LOG_LEVEL": "loud"}, "$AGENT_LOG_LEVEL"),
        ({"AGENT_HEARTBEAT_SECONDS": "-1"}, "$AGENT_HEARTBEAT_SECONDS"),
    ],
)
def test_bad_env_values_name_the_variable(env: dict[str, str], where: str, home: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env=env, home=home)
    assert info.value.message.startswith(f"{where}: bad value")


def test_bad_file_value_and_bad_toml(home: Path) -> None:
    write_config(home, "limit = 1.5\n")
    with pytest.raises(ConfigError, match="whole number"):
        load_settings(env={}, home=home)
    write_config(home, "limit = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(env={}, home=home)


def test_bad_flag_value_names_the_flag(home: Path) -> None:
    with pytest.raises(ConfigError, match=r"^--limit: bad value 0"):
        with_overrides(load_settings(env={}, home=home), limit=0)


# --------------------------------------------------------------------------- masking


def test_secrets_are_masked(home: Path) -> None:
    settings = load_settings(env={"AGENT_API_KEY": "sk-verysecretvalue"}, home=home)
    assert settings.shown("api_key") == "sk******ue"
    assert "verysecret" not in repr(settings)
    assert mask("short") == "********"
    assert load_settings(env={}, home=home).shown("api_key") == ""


# --------------------------------------------------------------------------- set_in_file


def test_set_in_file_round_trip(home: Path) -> None:
    path = home / "config.toml"
    set_in_file(path, "limit", "4")
    set_in_file(path, "api_url", "http://example:1/api")
    assert tomllib.loads(path.read_text()) == {"limit": 4, "api_url": "http://example:1/api"}
    set_in_file(path, "limit", None)
    assert tomllib.loads(path.read_text()) == {"api_url": "http://example:1/api"}
    with pytest.raises(ConfigError) as info:
        set_in_file(path, "nope", "1")
    assert info.value.hint is not None and "api_url" in info.value.hint
    with pytest.raises(ConfigError, match="must be 1 or more"):
        set_in_file(path, "limit", "0")


# --------------------------------------------------------------------------- agent config …


runner = CliRunner()


def agent(home: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, ["--home", str(home), *args], env=env)
    return result.exit_code, result.stdout, result.stderr


def test_config_set_view_unset_round_trip(home: Path) -> None:
    code, out, _ = agent(home, "config", "set", "limit", "4")
    assert code == 0, out
    assert "limit = 4" in out
    assert tomllib.loads((home / "config.toml").read_text()) == {"limit": 4}

    code, out, _ = agent(home, "config", "view", "--show-sources")
    assert code == 0
    assert _row(out, "limit") == ["limit", "4", "file"]
    assert _row(out, "api_url") == ["api_url", "http://127.0.0.1:4200/api", "default"]
    assert _row(out, "home") == ["home", str(home), "flag"]

    code, out, _ = agent(home, "config", "unset", "limit")
    assert code == 0
    assert tomllib.loads((home / "config.toml").read_text()) == {}
    _, out, _ = agent(home, "config", "view", "--show-sources")
    assert _row(out, "limit") == ["limit", "10", "default"]


def test_config_view_sources_env_and_flag(home: Path) -> None:
    write_config(home, "limit = 2\n")
    env = {"AGENT_LOG_LEVEL": "debug", "AGENT_API_KEY": "sk-verysecretvalue"}
    result = runner.invoke(
        app,
        ["--home", str(home), "--api-url", "http://h:9/api", "config", "view", "--show-sources"],
        env=env,
    )
    assert result.exit_code == 0, result.output
    assert _row(result.stdout, "log_level") == ["log_level", "debug", "env"]
    assert _row(result.stdout, "api_url") == ["api_url", "http://h:9/api", "flag"]
    assert _row(result.stdout, "api_key") == ["api_key", "sk******ue", "env"]
    assert "verysecret" not in result.output


def test_config_view_without_sources_has_two_columns(home: Path) -> None:
    code, out, _ = agent(home, "config", "view")
    assert code == 0
    assert _row(out, "limit") == ["limit", "10"]
    assert f"config file: {home / 'config.toml'}" in out


def test_config_set_unknown_key_lists_valid_keys(home: Path) -> None:
    code, out, err = agent(home, "config", "set", "bogus", "1")
    assert code == 1
    assert out == ""
    assert "error: config set: unknown setting 'bogus'" in err
    assert "hint: valid settings: api_url, api_key" in err
    assert "Traceback" not in err


def test_config_set_bad_value_and_empty_value(home: Path) -> None:
    code, _, err = agent(home, "config", "set", "limit", "0")
    assert code == 1
    assert "bad value '0' for limit: must be 1 or more" in err
    code, _, err = agent(home, "config", "set", "api_key", "")
    assert code == 1
    assert "agent config unset api_key" in err
    assert not (home / "config.toml").exists()


def test_config_set_accepts_dashes_and_masks_secrets(home: Path) -> None:
    code, out, _ = agent(home, "config", "set", "api-key", "sk-verysecretvalue")
    assert code == 0
    assert "verysecret" not in out
    assert tomllib.loads((home / "config.toml").read_text()) == {"api_key": "sk-verysecretvalue"}


def test_config_set_warns_when_env_overrides(home: Path) -> None:
    code, _, err = agent(home, "config", "set", "limit", "3", env={"AGENT_LIMIT": "5"})
    assert code == 0
    assert "$AGENT_LIMIT is set and overrides the config file" in err


def test_config_set_writes_the_config_flag_file(home: Path, tmp_path: Path) -> None:
    other = tmp_path / "elsewhere.toml"
    code, _, _ = agent(home, "--config", str(other), "config", "set", "limit", "7")
    assert code == 0
    assert tomllib.loads(other.read_text()) == {"limit": 7}
    assert not (home / "config.toml").exists()


def test_unknown_key_in_file_is_a_clean_error(home: Path) -> None:
    write_config(home, "colour = 1\n")
    code, _, err = agent(home, "config", "view")
    assert code == 1
    assert "unknown setting 'colour'" in err
    assert "hint: valid settings:" in err


def test_config_unset_of_a_key_not_set(home: Path) -> None:
    code, _, err = agent(home, "config", "unset", "limit")
    assert code == 0
    assert "limit was not set" in err


def _row(table: str, key: str) -> list[str]:
    for line in table.splitlines():
        cells = line.split()
        if cells and cells[0] == key:
            return cells
    raise AssertionError(f"no row {key!r} in:\n{table}")


def test_readme_lists_every_setting_with_its_environment_variable() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    start = readme.index("## Configuration")
    table = readme[start : readme.index("\n### ", start)]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    missing = [
        s.key
        for s in SETTINGS
        if not any(f"`{s.key}`" in row.split("|")[1] and f"`{s.env}`" in row for row in rows)
    ]
    assert missing == [], f"settings missing from README's configuration table: {missing}"
