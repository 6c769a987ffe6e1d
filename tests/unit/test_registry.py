"""The runner registry, over real entry points: ours from the installed flowagent, and third
parties' from distributions written into a temporary directory on sys.path."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from agent.errors import InputError, RunnerError, UnknownRunner
from runners import registry
from runners.base import Runner
from runners.subprocess import SubprocessRunner


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Installs a few third-party runners, one of them broken, for the duration of a test."""
    (tmp_path / "plain_runner.py").write_text(
        textwrap.dedent(
            """
            class PlainRunner:
                name = "plain"

                async def start(self, spec, sink):
                    raise NotImplementedError
            """
        )
    )
    entry_points = {
        "plain-runner": "plain = plain_runner:PlainRunner\n",
        "broken-runner": "broken = no_such_module_xyz:Runner\n",
        "not-a-runner": "notarunner = plain_runner:__name__\n",
        "first-dup": "dup = plain_runner:PlainRunner\n",
        "second-dup": "dup = plain_runner:PlainRunner\n",
    }
    for dist, line in entry_points.items():
        info = tmp_path / f"{dist.replace('-', '_')}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(f"[flowagent.runners]\n{line}")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_the_subprocess_runner_is_registered_like_any_other() -> None:
    assert registry.available_runners()["subprocess"] is SubprocessRunner
    runner = registry.load_runner("subprocess")
    assert isinstance(runner, SubprocessRunner) and isinstance(runner, Runner)


def test_unknown_runner_names_the_installed_ones() -> None:
    with pytest.raises(UnknownRunner) as caught:
        registry.load_runner("nomad")
    assert str(caught.value) == "no runner named 'nomad' is installed"
    assert caught.value.hint is not None and "subprocess" in caught.value.hint


def test_valid_options_come_back_normalised() -> None:
    assert registry.validate_options("subprocess", {}) == {"python": None}
    assert registry.validate_options("subprocess", {"python": "/opt/py/bin/python"}) == {
        "python": "/opt/py/bin/python"
    }


def test_unknown_option_is_named_with_a_suggestion() -> None:
    with pytest.raises(InputError) as caught:
        registry.validate_options("subprocess", {"pyhton": "python3"})
    assert str(caught.value) == (
        "invalid options for runner 'subprocess': unknown option 'pyhton' (did you mean 'python'?)"
    )
    assert caught.value.hint == "valid options: python (str | None)"


def test_option_of_the_wrong_type_is_explained() -> None:
    with pytest.raises(
        InputError, match=r"option 'python': Input should be a valid string \(got 3\)"
    ):
        registry.validate_options("subprocess", {"python": 3})


def test_options_of_an_unknown_runner() -> None:
    with pytest.raises(UnknownRunner):
        registry.validate_options("nomad", {})


def test_describe_lists_each_option() -> None:
    [option] = registry.describe_runner("subprocess")
    assert option[:3] == ("python", "str | None", "None")
    assert "interpreter" in option.description


def test_third_party_runners_are_found_and_broken_ones_reported(plugins: Path) -> None:
    entries = {e.name: e for e in registry.runner_entries()}

    assert entries["plain"].cls is not None and entries["plain"].package == "plain-runner"
    assert entries["broken"].cls is None
    assert "cannot import no_such_module_xyz:Runner" in str(entries["broken"].error)
    assert entries["notarunner"].error == "plain_runner:__name__ is not a runner class"
    assert "registered more than once" in str(entries["dup"].error)
    assert set(registry.available_runners()) == {"subprocess", "docker", "inprocess", "plain"}


def test_a_broken_runner_says_why_when_asked_for(plugins: Path) -> None:
    with pytest.raises(RunnerError, match="installed but cannot be loaded") as caught:
        registry.load_runner("broken")
    assert not isinstance(caught.value, UnknownRunner)
    assert caught.value.hint == "check or reinstall the package that provides it (broken-runner)"


def test_a_runner_without_options_model_takes_none(plugins: Path) -> None:
    assert registry.validate_options("plain", {}) == {}
    assert registry.describe_runner("plain") == []
    with pytest.raises(InputError, match="runner 'plain' takes no options, got: image"):
        registry.validate_options("plain", {"image": "x"})
