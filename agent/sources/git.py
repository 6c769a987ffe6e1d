"""Running git for the agent: no prompts, credentials only in the child's environment.

A token named by a deployment's ``token_env`` is sent as an HTTP header through
``GIT_CONFIG_COUNT``/``GIT_CONFIG_KEY_n`` variables of the git process: never on its command
line (``ps`` shows that), never in a config file or a remote URL on disk.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agent.errors import SourceError, TransientSourceError

#: A fetch that takes longer than this is given up (and retried as a network failure).
FETCH_TIMEOUT_SECONDS = 300.0

# What git prints when retrying may help, and when it cannot.
_AUTH = re.compile(
    r"Authentication failed|could not read (Username|Password)|returned error: 40[13]"
    r"|Permission denied \(publickey|Access denied|HTTP Basic",
    re.IGNORECASE,
)
_MISSING = re.compile(
    r"does not appear to be a git repository|Repository not found|returned error: 404"
    r"|No such file or directory|not found",
    re.IGNORECASE,
)
_TRANSIENT = re.compile(
    r"Could not resolve host|Connection refused|Connection timed out|Failed to connect"
    r"|Operation timed out|early EOF|RPC failed|returned error: 5\d\d|hung up unexpectedly"
    r"|Connection reset|Temporary failure|unable to connect",
    re.IGNORECASE,
)

_BOILERPLATE = re.compile(
    r"^(fatal: )?Could not read from remote repository\.?$"
    r"|^Please make sure you have the correct access rights$|^and the repository exists\.?$"
)


@dataclass(frozen=True)
class Credentials:
    """A token for https remotes, from the agent's environment; empty when there is none."""

    token: str | None = field(default=None, repr=False)

    @property
    def header(self) -> str | None:
        if not self.token:
            return None
        # Basic with the token as password: GitHub, GitLab, Gitea and Bitbucket all take it.
        pair = base64.b64encode(f"x-access-token:{self.token}".encode()).decode()
        return f"Authorization: Basic {pair}"

    @property
    def secrets(self) -> frozenset[str]:
        """The strings to mask wherever they could appear."""
        if not self.token:
            return frozenset()
        header = self.header
        assert header is not None
        return frozenset({self.token, header.rpartition(" ")[2]})

    def mask(self, text: str) -> str:
        for secret in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(secret, "********")
        return text


def git_env(credentials: Credentials, base: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env["GIT_TERMINAL_PROMPT"] = "0"  # an agent has no one to type a password
    env.setdefault("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
    env["LC_ALL"] = "C"  # messages we match are English
    # Our config entries go after any the agent's own environment carries.
    count = int(env.get("GIT_CONFIG_COUNT", "0") or "0")
    header = credentials.header
    if header is not None:
        env[f"GIT_CONFIG_KEY_{count}"] = "http.extraHeader"
        env[f"GIT_CONFIG_VALUE_{count}"] = header
        count += 1
    if count:
        env["GIT_CONFIG_COUNT"] = str(count)
    return env


@dataclass(frozen=True)
class GitResult:
    returncode: int
    stdout: str
    stderr: str


async def run_git(
    args: Sequence[str],
    *,
    credentials: Credentials = Credentials(),
    timeout: float = FETCH_TIMEOUT_SECONDS,
    cwd: Path | None = None,
) -> GitResult:
    """Run ``git args…``; its output comes back with any secret masked."""
    process = await asyncio.create_subprocess_exec(
        "git",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=git_env(credentials),
        cwd=cwd,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except BaseException:  # a timeout or the run cancelled: git must not go on alone
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return GitResult(
        process.returncode,
        credentials.mask(out.decode(errors="replace")),
        credentials.mask(err.decode(errors="replace")),
    )


def fetch_error(url: str, stderr: str, token_env: str | None) -> SourceError:
    """Translate a failed fetch: what went wrong, and what to do about it."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    # Over ssh, git ends every failure with the same three lines of advice, which would push
    # out ssh's own reason ("Permission denied (publickey)", "Host key verification failed").
    told = [line for line in lines if not _BOILERPLATE.search(line)]
    lines = told or lines
    detail = "; ".join(line.removeprefix("fatal: ") for line in lines[-3:]) or "no output"
    message = f"git fetch failed: {url}: {detail}"
    if _AUTH.search(stderr):
        hint = (
            f"check the token in the agent's ${token_env}"
            if token_env
            else "the repository needs credentials: set source.token_env (https) or the agent "
            "host's ssh key"
        )
        return SourceError(f"{message} (credentials refused)", hint=hint)
    if _TRANSIENT.search(stderr):
        return TransientSourceError(
            f"{message} (repository unreachable)", hint="check the URL and the network"
        )
    if _MISSING.search(stderr):
        return SourceError(f"{message} (no repository there)", hint="check the URL")
    return SourceError(message)
