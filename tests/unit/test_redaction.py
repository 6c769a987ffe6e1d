"""Secret redaction: which names are secret, what is masked in free text and in structures, the
structlog processor, the run-output sink, and the settings that drive it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from typer.testing import CliRunner

from agent.cli.app import app
from agent.config import load_settings
from agent.errors import ConfigError
from agent.logs import configure_logging
from agent.ops import settings_redactor
from agent.redaction import (
    MASK,
    Redactor,
    is_secret_name,
    mask_env,
    mask_env_fields,
    secret_values,
)
from runners.base import LINE_PIECE


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("AGENT_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize(
    "name",
    [
        "GITHUB_TOKEN",
        "DB_PASSWORD",
        "AWS_SECRET_ACCESS_KEY",
        "api_key",
        "MY_KEYFILE_PASSWD",
        "GOOGLE_APPLICATION_CREDENTIALS",
    ],
)
def test_secret_looking_names(name: str) -> None:
    assert is_secret_name(name)


@pytest.mark.parametrize("name", ["PATH", "HOME", "USER", "LANG", "FLOWAGENT_RUN_ID"])
def test_ordinary_names(name: str) -> None:
    assert not is_secret_name(name)


def test_custom_patterns_replace_the_defaults() -> None:
    assert is_secret_name("MY_PRIVATE_THING", ["*PRIVATE*"])
    assert not is_secret_name("GITHUB_TOKEN", ["*PRIVATE*"])


def test_values_of_secret_names_are_masked_in_text() -> None:
    redactor = Redactor.build(env={"GITHUB_TOKEN": "ghp_abcdef123456", "HOME": "/home/me"})

    text = "cloning with ghp_abcdef123456 into /home/me"

    assert redactor.redact(text) == f"cloning with {MASK} into /home/me"


def test_short_env_values_are_not_hunted_in_text_but_the_api_key_is() -> None:
    redactor = Redactor.build(
        env={"FEATURE_KEY_ENABLED": "true", "PIN_PASSWORD": "12345"}, extra=["k3y"]
    )

    assert redactor.redact("enabled=true pin=12345") == "enabled=true pin=12345"
    assert redactor.redact("auth k3y") == f"auth {MASK}"
    assert secret_values({"FEATURE_KEY_ENABLED": "true"}) == set()


def test_a_secret_containing_another_is_masked_whole() -> None:
    redactor = Redactor.build(env={"A_TOKEN": "abcdef", "B_TOKEN": "abcdefghijkl"})

    assert redactor.redact("x abcdefghijkl y abcdef") == f"x {MASK} y {MASK}"


def test_url_passwords_are_masked_but_the_user_kept() -> None:
    redactor = Redactor()

    text = "connecting to postgresql://app:pa55w0rd@db:5432/x and https://example.org/a:b@c"

    assert redactor.redact(text) == (
        f"connecting to postgresql://app:{MASK}@db:5432/x and https://example.org/a:b@c"
    )


def test_regex_characters_in_secrets_are_literal() -> None:
    redactor = Redactor.build(env={"X_SECRET": "a.b*c(d)e"})

    assert redactor.redact("axbxc a.b*c(d)e") == f"axbxc {MASK}"


def test_with_env_adds_a_runs_secrets() -> None:
    base = Redactor.build(extra=["the-api-key"])
    run = base.with_env({"DEPLOY_TOKEN": "tok-123456", "PLAIN": "visible"})

    assert run.redact("the-api-key tok-123456 visible") == f"{MASK} {MASK} visible"
    assert base.redact("tok-123456") == "tok-123456"
    assert base.with_env({"PLAIN": "x"}) is base


def test_redact_value_walks_structures_and_hides_secret_keys() -> None:
    redactor = Redactor.build(extra=["s3cr3t-value"])
    value = {
        "message": "got s3cr3t-value back",
        "api_key": "anything at all",
        "empty_token": "",
        "nested": [{"password": "x"}, ("s3cr3t-value", 1)],
        "count": 3,
    }

    assert redactor.redact_value(value) == {
        "message": f"got {MASK} back",
        "api_key": MASK,
        "empty_token": "",
        "nested": [{"password": MASK}, (MASK, 1)],
        "count": 3,
    }


def test_mask_env_masks_by_name_whatever_the_value() -> None:
    env = {"SHORT_TOKEN": "1", "HOME": "/root"}

    assert mask_env(env) == {"SHORT_TOKEN": MASK, "HOME": "/root"}


def test_wrap_sink_redacts_each_line() -> None:
    lines: list[tuple[str, str]] = []
    redactor = Redactor.build(env={"DB_PASSWORD": "hunter2-hunter2"})

    sink = redactor.wrap_sink(lambda stream, line: lines.append((stream, line)), LINE_PIECE)
    sink("stdout", "password is hunter2-hunter2")

    assert lines == [("stdout", f"password is {MASK}")]


SECRET = "hunter2-hunter2"


@pytest.mark.parametrize("cut", range(1, len(SECRET)))
def test_a_secret_cut_between_two_pieces_is_masked_in_both(cut: int) -> None:
    redact = Redactor.build(env={"DB_PASSWORD": SECRET}).lines(LINE_PIECE)
    first = "a" * (LINE_PIECE - cut) + SECRET[:cut]
    second = SECRET[cut:] + " and after"

    out = [redact("stdout", first), redact("stdout", second)]

    joined = "".join(out)
    assert not any(SECRET[i : i + 4] in joined for i in range(len(SECRET) - 3)), out
    assert out[0] == "a" * (LINE_PIECE - cut) + MASK
    assert out[1] == MASK + " and after"


def test_a_piece_cut_at_utf8_bytes_is_told_by_its_encoded_size() -> None:
    redact = Redactor.build(env={"DB_PASSWORD": SECRET}).lines(LINE_PIECE)
    # 3-byte characters: a byte-stream runner's 64 KiB piece is a third as many characters.
    first = "€" * ((LINE_PIECE - 5) // 3) + SECRET[:5]
    assert len(first.encode()) >= LINE_PIECE - 3

    out = [redact("stderr", first), redact("stderr", SECRET[5:] + "!")]

    assert out == ["€" * ((LINE_PIECE - 5) // 3) + MASK, MASK + "!"]


def test_only_full_size_pieces_and_their_own_stream_are_joined() -> None:
    redact = Redactor.build(env={"DB_PASSWORD": SECRET}).lines(LINE_PIECE)
    # A short line is a whole line: its end is not a secret's start, the next line is its own.
    assert redact("stdout", "ends with hunter") == "ends with hunter"
    assert redact("stdout", "2-hunter2 starts") == "2-hunter2 starts"
    # A piece on stdout says nothing about stderr's next line.
    assert redact("stdout", "a" * (LINE_PIECE - 3) + "hun").endswith(MASK)
    assert redact("stderr", "ter2-hunter2") == "ter2-hunter2"
    assert redact("stdout", "ter2-hunter2 rest") == MASK + " rest"
    # A piece that ends in no secret's start is left whole; the next line with it.
    piece = "a" * LINE_PIECE
    assert redact("stdout", piece) == piece
    assert redact("stdout", "ter2-hunter2") == "ter2-hunter2"


@pytest.fixture
def reset_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def test_agent_log_lines_are_redacted(capsys: pytest.CaptureFixture[str], reset_structlog) -> None:
    redactor = Redactor.build(extra=["api-key-0123456789"])
    configure_logging("info", "json", redactor)
    logger = structlog.get_logger("test")

    logger.info("request_failed", url="http://u:pw@h/x", error="bad key api-key-0123456789")
    try:
        raise RuntimeError("leaked api-key-0123456789")
    except RuntimeError:
        logger.exception("crashed")

    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert lines[0]["error"] == f"bad key {MASK}"
    assert lines[0]["url"] == f"http://u:{MASK}@h/x"
    assert "api-key-0123456789" not in lines[1]["exception"]
    assert MASK in lines[1]["exception"]


def test_settings_redactor_covers_secret_settings_and_custom_patterns(tmp_path: Path) -> None:
    settings = load_settings(
        env={"AGENT_API_KEY": "key-abcdef", "AGENT_SECRET_PATTERNS": "*PRIVATE*"}, home=tmp_path
    )
    env = {"MY_PRIVATE_VALUE": "private-123456", "GITHUB_TOKEN": "ghp_not_matched"}

    redactor = settings_redactor(settings, env)

    assert settings.secret_patterns == ("*PRIVATE*",)
    assert redactor.redact("key-abcdef private-123456 ghp_not_matched") == (
        f"{MASK} {MASK} ghp_not_matched"
    )


def test_secret_patterns_setting_validation(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="secret_patterns"):
        load_settings(env={"AGENT_SECRET_PATTERNS": " , "}, home=tmp_path)
    (tmp_path / "config.toml").write_text('secret_patterns = ["*A*", "*B*"]\n')
    assert load_settings(env={}, home=tmp_path).secret_patterns == ("*A*", "*B*")


def test_config_view_masks_the_api_key(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["--home", str(tmp_path), "config", "view", "--show-sources"],
        env={"AGENT_API_KEY": "very-secret-api-key", "COLUMNS": "200"},
    )

    assert result.exit_code == 0, result.output
    assert "very-secret-api-key" not in result.output
    assert "secret_patterns" in result.output
    assert "*TOKEN*,*SECRET*" in result.output


def test_mask_env_fields_masks_every_env_by_name_at_any_depth() -> None:
    document = [
        {
            "name": "d",
            "env": {"API_TOKEN": "", "HOME": "/root"},
            "runner_options": {"env": {"DB_PASSWORD": "pw"}, "image": "x"},
            "parameters": {"env": "not a mapping"},
        }
    ]
    assert mask_env_fields(document) == [
        {
            "name": "d",
            "env": {"API_TOKEN": MASK, "HOME": "/root"},
            "runner_options": {"env": {"DB_PASSWORD": MASK}, "image": "x"},
            "parameters": {"env": "not a mapping"},
        }
    ]
