"""Sources without sockets: packing bundles, git's errors and environment, source validation."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.errors import InputError, SourceError, TransientSourceError
from agent.models import BundleSource, DeploymentCreate, GitSource
from agent.sources.bundle import check_archive, digest_of, pack
from agent.sources.git import Credentials, fetch_error, git_env

QUEUE = "00000000-0000-0000-0000-000000000001"


def tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def names(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return tar.getnames()


def test_the_same_files_pack_to_the_same_bytes_whatever_their_times(tmp_path: Path) -> None:
    files = {"a.py": "x = 1\n", "pkg/b.py": "y = 2\n"}
    one = tree(tmp_path / "one", files)
    two = tree(tmp_path / "two", files)
    os.utime(two / "a.py", (1, 1))
    (two / "pkg").chmod(0o700)

    assert pack(one) == pack(two)
    (two / "a.py").write_text("x = 2\n")
    assert digest_of(pack(one)) != digest_of(pack(two))


def test_ignore_file_and_git_directory_are_left_out(tmp_path: Path) -> None:
    root = tree(
        tmp_path,
        {
            "flow.py": "",
            "debug.log": "",
            "keep.log": "",
            "build/out.bin": "",
            ".git/HEAD": "",
            ".flowagentignore": "*.log\n!keep.log\nbuild/\n",
        },
    )
    assert sorted(names(pack(root))) == [".flowagentignore", "flow.py", "keep.log"]


def test_links_inside_are_kept_and_links_out_refused(tmp_path: Path) -> None:
    root = tree(tmp_path / "d", {"data/v.txt": "1"})
    (root / "inside").symlink_to("data/v.txt")
    (root / "dir-link").symlink_to("data")
    assert "inside" in names(pack(root)) and "dir-link" in names(pack(root))

    (root / "out").symlink_to("../../elsewhere")
    with pytest.raises(InputError, match=r"out is a symbolic link to \.\./\.\./elsewhere, outside"):
        pack(root)


def test_pack_refuses_more_than_the_limit(tmp_path: Path) -> None:
    root = tree(tmp_path, {"big.txt": "x" * 2000})
    with pytest.raises(InputError, match="more than 1,000 bytes"):
        pack(root, max_bytes=1000)


def test_archives_that_escape_are_not_usable(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("../evil.py")
        tar.addfile(info, io.BytesIO(b""))
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(buffer.getvalue())
    with pytest.raises(SourceError, match="not a usable bundle"):
        check_archive(bad)
    with pytest.raises(SourceError, match="not a usable bundle"):
        check_archive(io.BytesIO(buffer.getvalue()))  # the server checks its spooled upload
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(b"not gzip")
    with pytest.raises(SourceError):
        check_archive(garbage)
    good = tmp_path / "good"
    good.mkdir()
    (good / "flow.py").write_text("def main(): pass\n")
    spooled = io.BytesIO(pack(good))
    spooled.seek(0, io.SEEK_END)  # read from its start, wherever the writer left it
    check_archive(spooled)


@pytest.mark.parametrize(
    ("stderr", "kind", "words"),
    [
        (
            "fatal: Authentication failed for 'https://h/r.git/'",
            SourceError,
            "credentials refused",
        ),
        (
            "fatal: unable to access 'http://h/r.git/': Failed to connect to h port 80: "
            "Connection refused",
            TransientSourceError,
            "repository unreachable",
        ),
        (
            "fatal: '/nope.git' does not appear to be a git repository",
            SourceError,
            "no repository there",
        ),
        (
            "fatal: unable to access: The requested URL returned error: 503",
            TransientSourceError,
            "",
        ),
    ],
)
def test_fetch_errors_say_what_went_wrong(stderr: str, kind: type, words: str) -> None:
    error = fetch_error("https://h/r.git", stderr, "GIT_TOKEN")
    assert type(error) is kind
    assert error.message.startswith("git fetch failed: https://h/r.git: ")
    assert words in error.message
    if words == "credentials refused":
        assert error.hint is not None and "$GIT_TOKEN" in error.hint


def test_an_ssh_refusal_says_ssh_s_reason_not_git_s_advice() -> None:
    stderr = (
        "root@127.0.0.1: Permission denied (publickey).\n"
        "fatal: Could not read from remote repository.\n\n"
        "Please make sure you have the correct access rights\n"
        "and the repository exists.\n"
    )
    error = fetch_error("ssh://h/r.git", stderr, None)
    assert error.message == (
        "git fetch failed: ssh://h/r.git: root@127.0.0.1: Permission denied (publickey). "
        "(credentials refused)"
    )
    assert error.hint is not None and "ssh key" in error.hint


def test_the_token_goes_in_git_s_environment_only_and_is_masked() -> None:
    credentials = Credentials("tok-123456")
    env = git_env(credentials, {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "a.b"})
    assert env["GIT_CONFIG_COUNT"] == "2"
    assert env["GIT_CONFIG_KEY_1"] == "http.extraHeader"
    assert env["GIT_CONFIG_VALUE_1"].startswith("Authorization: Basic ")
    assert env["GIT_TERMINAL_PROMPT"] == "0"
    assert "tok-123456" not in " ".join(k for k in env)
    header = env["GIT_CONFIG_VALUE_1"].rpartition(" ")[2]
    assert credentials.mask(f"x tok-123456 {header} y") == "x ******** ******** y"
    assert "GIT_CONFIG_COUNT" not in git_env(Credentials(), {})


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"git": "https://u:ghp_x@h/r.git"}, "token_env"),
        ({"git": "https://h/r.git", "path": "../x"}, "inside the repository"),
        ({"git": "https://h/r.git", "path": "/abs"}, "inside the repository"),
        ({"git": "https://h/r.git", "token_env": "ghp_abc-123"}, "NAME"),
        ({"git": "https://h/r.git", "ref": "--upload-pack=evil"}, "not a branch"),
    ],
)
def test_bad_git_sources_are_refused(source: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        GitSource.model_validate(source)


def test_a_deployment_with_a_source_points_nowhere_outside_it() -> None:
    source = {"git": "https://h/r.git"}
    with pytest.raises(ValidationError, match="not working_dir"):
        DeploymentCreate(
            name="d", work_queue_id=QUEUE, entrypoint="a.py:f", working_dir="/x", source=source
        )
    with pytest.raises(ValidationError, match="absolute path"):
        DeploymentCreate(name="d", work_queue_id=QUEUE, entrypoint="/x/a.py:f", source=source)
    made = DeploymentCreate(
        name="d", work_queue_id=QUEUE, entrypoint="a.py:f", source={"bundle": "sha256:" + "0" * 64}
    )
    assert isinstance(made.source, BundleSource)
