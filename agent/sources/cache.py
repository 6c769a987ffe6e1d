"""What the supervisor asks of sources: a run's code on disk, at one recorded commit.

``prepare`` resolves the deployment's ref to a commit (or takes the commit an earlier attempt
of the run recorded), fetches it into the host's mirror when missing, and exports it for the
run. Every failure is a :class:`SourceError` whose message the run is FAILED with.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from uuid import UUID

import structlog

from agent.errors import SourceError
from agent.models import FlowRun, GitSource, RunSource
from agent.sources.checkout import Checkouts
from agent.sources.git import Credentials
from agent.sources.mirror import Mirror, looks_like_commit

log = structlog.get_logger("agent.sources")


@dataclass(frozen=True)
class PreparedSource:
    """A run's code on disk: where it works, and what to record on the run."""

    working_dir: Path
    record: RunSource
    secrets: frozenset[str] = field(default=frozenset(), repr=False)


class SourceCache:
    """The host's mirrors (shared) and one agent's checkouts."""

    def __init__(
        self, home: Path, checkouts: Path, environ: Mapping[str, str] | None = None
    ) -> None:
        self.root = home / "sources" / "git"
        self.checkouts = Checkouts(checkouts)
        self._environ = os.environ if environ is None else environ

    def mirror(self, url: str) -> Mirror:
        return Mirror(self.root, url)

    def credentials(self, source: GitSource) -> Credentials:
        if source.token_env is None:
            return Credentials()
        token = self._environ.get(source.token_env)
        if not token:
            raise SourceError(
                f"the deployment's source needs a token from ${source.token_env}, which is not "
                "set in the agent's environment",
                hint=f"start the agent with {source.token_env}=<token> in its environment",
            )
        return Credentials(token)

    def working_dir(self, run_id: UUID, source: GitSource) -> Path:
        base = self.checkouts.path(run_id)
        return base / source.path if source.path else base

    async def prepare(self, run: FlowRun, source: GitSource) -> PreparedSource:
        credentials = self.credentials(source)
        mirror = self.mirror(source.git)
        recorded = run.source if run.source is not None and run.source.git == source.git else None
        if recorded is not None:
            commit = await self._recorded_commit(mirror, recorded.commit, source, credentials)
        else:
            commit = await self._resolve(mirror, source, credentials)
        mirror.record_use()
        base = await self.checkouts.export(mirror.path, commit, run.id)
        workdir = self.working_dir(run.id, source)
        if not workdir.is_dir():
            self.checkouts.remove(run.id)
            raise SourceError(
                f"path {source.path!r} is not a directory in commit {commit[:12]} of {source.git}",
                hint="fix the deployment's source.path",
            )
        log.info("source_ready", url=source.git, commit=commit, checkout=str(base))
        record = RunSource(git=source.git, ref=source.ref, commit=commit, path=source.path)
        return PreparedSource(workdir, record, credentials.secrets)

    async def _resolve(self, mirror: Mirror, source: GitSource, credentials: Credentials) -> str:
        ref = source.ref
        if looks_like_commit(ref) and await mirror.has_commit(str(ref)):
            return str(ref)  # a commit never moves: no need to ask the remote
        await mirror.fetch(credentials, source.token_env)
        commit = await mirror.resolve(ref)
        if commit is not None:
            return commit
        if ref is None:
            raise SourceError(
                f"{source.git} has no HEAD branch to run",
                hint="give the deployment's source a ref (a branch, tag or commit)",
            )
        close = await mirror.near_misses(ref)
        guess = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise SourceError(
            f"ref {ref!r} not found in {source.git}{guess}",
            hint="a ref is a branch, a tag or a commit of the repository",
        )

    async def _recorded_commit(
        self, mirror: Mirror, commit: str, source: GitSource, credentials: Credentials
    ) -> str:
        """An earlier attempt's commit: the same code again, even if the branch moved on."""
        if await mirror.has_commit(commit):
            return commit
        await mirror.fetch(credentials, source.token_env)
        if not await mirror.has_commit(commit):
            # Not reachable from any ref any more (a force-push): ask for it by id.
            with contextlib.suppress(SourceError):  # the message below says it better
                await mirror.fetch(credentials, source.token_env, extra=(commit,))
        if await mirror.has_commit(commit):
            return commit
        raise SourceError(
            f"commit {commit} that an earlier attempt of this run ran is no longer in "
            f"{source.git}; this attempt cannot run the same code",
            hint="start a new run of the deployment",
        )

    def release(self, run_id: UUID) -> None:
        """The run is over: its checkout goes."""
        self.checkouts.remove(run_id)
