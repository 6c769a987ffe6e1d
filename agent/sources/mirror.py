"""One bare mirror per repository per host, shared by every agent there.

Agents on one host fetch a repository into the same mirror under an exclusive ``flock``. A fetch
that starts after another began while we waited for the lock finds nothing new, so it is
skipped: twenty runs starting at once cost one fetch, not twenty. Git fetches only objects the
mirror lacks. Exports (checkout.py) read the mirror without the lock: git writes new objects
and refs atomically, and the agent never runs ``gc`` while others may read.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from agent.errors import SourceError, TransientSourceError
from agent.private import write_private
from agent.sources.git import Credentials, fetch_error, run_git
from agent.sources.locks import locked

log = structlog.get_logger("agent.sources")

#: Tries of a fetch that failed for a reason that may pass (connection refused, 5xx…).
FETCH_ATTEMPTS = 4
_FULL_SHA = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
_HEAD_REF = "refs/flowagent/HEAD"


def mirror_key(url: str) -> str:
    """The mirror's directory name: the same URL on every agent of the host, one mirror."""
    return hashlib.sha256(url.strip().rstrip("/").encode()).hexdigest()[:24]


class Mirror:
    """The bare mirror of ``url`` under ``root`` (``$AGENT_HOME/sources/git``)."""

    def __init__(self, root: Path, url: str) -> None:
        self.url = url
        self.key = mirror_key(url)
        self.path = root / self.key
        self.meta = root / f"{self.key}.json"
        self.lock_path = root / f"{self.key}.lock"
        self.use_path = root / f"{self.key}.use"

    # ------------------------------------------------------------------ locking

    def locked(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Held while the mirror is created or fetched."""
        return locked(self.lock_path)

    def in_use(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Held (shared) while a run resolves and exports from it: prune leaves it alone."""
        return locked(self.use_path, shared=True)

    # ------------------------------------------------------------------ metadata

    def read_meta(self) -> dict[str, Any]:
        try:
            data = json.loads(self.meta.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write_meta(self, **changes: Any) -> None:
        data = self.read_meta() | {"url": self.url} | changes
        write_private(self.meta, json.dumps(data, sort_keys=True))

    def touch(self) -> None:
        """Mark the mirror used now (pruning removes mirrors unused for long)."""
        with contextlib.suppress(OSError):
            os.utime(self.meta)

    # ------------------------------------------------------------------ git

    async def _git(self, *args: str, credentials: Credentials = Credentials()) -> str | None:
        result = await run_git(["--git-dir", str(self.path), *args], credentials=credentials)
        return result.stdout.strip() if result.returncode == 0 else None

    async def has_commit(self, commit: str) -> bool:
        """Whether ``commit`` is a commit in the mirror (not a tag naming one: what a run
        records is the commit itself)."""
        if not (self.path / "HEAD").exists():
            return False
        return await self._git("cat-file", "-t", commit) == "commit"

    async def remote_commit(self, ref: str | None, credentials: Credentials) -> str | None:
        """What ``ref`` names on the remote right now (a branch, else a tag, peeled; HEAD when
        None), asked with one ``git ls-remote``: no lock, no pack negotiation, nothing written.
        None when the remote has no such branch or tag, or could not be asked: the fetch that
        follows then says why, with its retries and messages."""
        if ref is None:
            names = ["HEAD"]
        elif ref.startswith("refs/"):
            names = [ref, f"{ref}^{{}}"]
        else:
            names = [f"refs/heads/{ref}", f"refs/tags/{ref}", f"refs/tags/{ref}^{{}}"]
        # Run in the mirror when there is one, so that no repository around the agent's working
        # directory lends its config; elsewhere from the cache's root, which is none.
        where = ["--git-dir", str(self.path)] if (self.path / "HEAD").exists() else []
        # Over git://, protocol v2's client writes its ls-refs request as eight small packets on
        # a socket without TCP_NODELAY: Nagle waits for the server's delayed ACK, 40 ms on every
        # request. v0 only reads the refs the server advertises, then writes one flush.
        plain = ["-c", "protocol.version=0"] if self.url.startswith("git://") else []
        result = await run_git(
            [*where, *plain, "ls-remote", "--", self.url, *names],
            credentials=credentials,
            cwd=None if where else self.path.parent,
        )
        if result.returncode != 0:
            log.info("source_ls_remote_failed", url=self.url, error=result.stderr.strip()[-300:])
            return None
        found: dict[str, str] = {}
        for line in result.stdout.splitlines():
            listed, _, name = line.partition("\t")
            if _FULL_SHA.match(listed):
                found[name] = listed
        for name in names:
            # An annotated tag is listed twice: the tag object, then (``^{}``) its commit.
            commit = found.get(f"{name}^{{}}") or found.get(name)
            if commit is not None:
                return commit
        return None

    async def fetch(
        self,
        credentials: Credentials,
        token_env: str | None,
        *,
        head: bool = False,
        extra: tuple[str, ...] = (),
    ) -> bool:
        """Bring the mirror's branches and tags (and the remote's HEAD when ``head``) up to date
        with the remote; False when another agent just did.

        HEAD only when asked: a remote whose HEAD names a branch that does not exist (common on
        self-hosted bare repositories) would fail the whole fetch. Retries network failures with
        backoff; raises SourceError when the fetch fails.
        """
        asked = time.time()
        done_key = "head_fetch_started" if head else "fetch_started"
        async with self.locked():
            if not extra and self.read_meta().get(done_key, 0) >= asked:
                return False  # someone fetched after we asked: nothing newer to get
            if not (self.path / "HEAD").exists():
                result = await run_git(["init", "--quiet", "--bare", str(self.path)])
                if result.returncode != 0:
                    raise SourceError(f"cannot create the git mirror {self.path}: {result.stderr}")
            started = time.time()
            refspecs = extra or (
                "+refs/heads/*:refs/heads/*",
                "+refs/tags/*:refs/tags/*",
                *([f"+HEAD:{_HEAD_REF}"] if head else []),
            )
            args = [
                "--git-dir",
                str(self.path),
                "fetch",
                "--quiet",
                "--prune",
                "--no-write-fetch-head",
                "--",
                self.url,
                *refspecs,
            ]

            def retrying_soon(state: RetryCallState) -> None:
                error = state.outcome.exception() if state.outcome else None
                delay = state.next_action.sleep if state.next_action else 0.0
                log.warning(
                    "source_fetch_retrying",
                    url=self.url,
                    error=str(error),
                    attempt=state.attempt_number,
                    delay=round(delay, 2),
                )

            retrying = AsyncRetrying(
                retry=retry_if_exception_type(TransientSourceError),
                stop=stop_after_attempt(FETCH_ATTEMPTS),
                wait=wait_exponential(multiplier=0.25, max=4),
                before_sleep=retrying_soon,
                reraise=True,
            )
            async for attempt in retrying:
                with attempt:
                    result = await run_git(args, credentials=credentials)
                    if result.returncode != 0:
                        raise fetch_error(self.url, result.stderr, token_env)
            stamps = {"fetch_started": started} | ({"head_fetch_started": started} if head else {})
            if not extra:
                self._write_meta(**stamps, fetched=time.time())
            log.info("source_fetched", url=self.url, seconds=round(time.time() - started, 3))
            return True

    def read_branch(self, name: str) -> str | None:
        """The commit a branch ref (``refs/heads/…``, or our HEAD) points at, read from the
        mirror's files: a git process per run start costs more than the rest of the lookup.
        None when it is not there as a plain ref (git is asked then)."""
        path = self.path / name
        if not path.resolve().is_relative_to(self.path.resolve()):
            return None
        with contextlib.suppress(OSError, UnicodeDecodeError):
            text = path.read_text().strip()
            if _FULL_SHA.match(text):
                return text
        with contextlib.suppress(OSError, UnicodeDecodeError):
            for line in (self.path / "packed-refs").read_text().splitlines():
                commit, _, ref = line.partition(" ")
                if ref == name and _FULL_SHA.match(commit):
                    return commit
        return None

    async def resolve(self, ref: str | None) -> str | None:
        """The commit ``ref`` names in the mirror (a branch, tag, HEAD or commit), or None."""
        # Branches always point at commits: read them; tags may need peeling: ask git.
        branch = (
            _HEAD_REF if ref is None else None if ref.startswith("refs/") else f"refs/heads/{ref}"
        )
        if branch is not None:
            commit = self.read_branch(branch)
            if commit is not None:
                return commit
        candidates = (
            [_HEAD_REF]
            if ref is None
            else [f"refs/heads/{ref}", f"refs/tags/{ref}", ref]
            if not ref.startswith("refs/")
            else [ref]
        )
        for name in candidates:
            commit = await self._git("rev-parse", "--verify", "--quiet", f"{name}^{{commit}}")
            if commit:
                return commit
        return None

    async def near_misses(self, ref: str) -> list[str]:
        listed = await self._git(
            "for-each-ref", "--format=%(refname:lstrip=2)", "refs/heads", "refs/tags"
        )
        names = listed.splitlines() if listed else []
        return difflib.get_close_matches(ref, names, n=3, cutoff=0.6)

    def record_use(self) -> None:
        if self.meta.exists():
            self.touch()
        else:
            self._write_meta()


def looks_like_commit(ref: str | None) -> bool:
    return ref is not None and _FULL_SHA.match(ref) is not None
