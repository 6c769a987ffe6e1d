"""What the supervisor asks of sources: a run's code on disk, at one recorded version.

``prepare`` resolves a git deployment's ref to a commit (or takes the commit an earlier attempt
of the run recorded), fetches it into the host's mirror when missing, and exports it for the
run; or gets a bundle into the host's cache (checked against its digest at every use) and
unpacks it for the run. Every failure is a :class:`SourceError` whose message the run is
FAILED with.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable
from uuid import UUID

import structlog

from agent.errors import FlowAgentError, SourceError
from agent.models import BundleSource, FlowRun, GitSource, RunSource
from agent.sources.bundle import extract
from agent.sources.bundles import BundleCache
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

    @property
    def summary(self) -> str:
        record = self.record
        if record.bundle is not None:
            return f"code from bundle {record.bundle}"
        ref = f" (ref {record.ref})" if record.ref else ""
        return f"code from {record.git} at commit {record.commit}{ref}"


@runtime_checkable
class BundleDownloader(Protocol):
    """The server a bundle comes from (the native backend)."""

    async def download_bundle(self, digest: str) -> bytes: ...


class SourceCache:
    """The host's mirrors (shared) and one agent's checkouts."""

    def __init__(
        self,
        home: Path,
        checkouts: Path,
        environ: Mapping[str, str] | None = None,
        downloader: BundleDownloader | None = None,
    ) -> None:
        self.root = home / "sources" / "git"
        self.bundles = BundleCache(home / "sources" / "bundles")
        self.checkouts = Checkouts(checkouts)
        self._environ = os.environ if environ is None else environ
        self._downloader = downloader

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

    def working_dir(self, run_id: UUID, source: GitSource | BundleSource) -> Path:
        base = self.checkouts.path(run_id)
        return base / source.path if isinstance(source, GitSource) and source.path else base

    async def prepare(self, run: FlowRun, source: GitSource | BundleSource) -> PreparedSource:
        if isinstance(source, BundleSource):
            return await self._prepare_bundle(run, source)
        return await self._prepare_git(run, source)

    async def _prepare_bundle(self, run: FlowRun, source: BundleSource) -> PreparedSource:
        downloader = self._downloader
        if downloader is None:
            raise SourceError("this agent's server cannot serve bundles (not a flowagent server)")

        async def download() -> bytes:
            try:
                return await downloader.download_bundle(source.bundle)
            except FlowAgentError as exc:
                raise SourceError(f"cannot download bundle {source.bundle}: {exc.message}") from exc

        target = self.checkouts.path(run.id)
        async with self.bundles.in_use(source.bundle):
            archive = await self.bundles.get(source.bundle, download)
            self.checkouts.remove(run.id)
            target.mkdir(parents=True, mode=0o755)
            try:
                await asyncio.to_thread(extract, archive, target)
            except BaseException:
                self.checkouts.remove(run.id)
                raise
        log.info("source_ready", bundle=source.bundle, checkout=str(target))
        return PreparedSource(target, RunSource(bundle=source.bundle))

    async def _prepare_git(self, run: FlowRun, source: GitSource) -> PreparedSource:
        credentials = self.credentials(source)
        mirror = self.mirror(source.git)
        recorded = run.source if run.source is not None and run.source.git == source.git else None
        async with mirror.in_use():
            if recorded is not None and recorded.commit is not None:
                commit = await self._recorded_commit(mirror, recorded.commit, source, credentials)
            else:
                commit = await self._resolve(mirror, source, credentials)
            mirror.record_use()
            base = await self.checkouts.export(mirror.path, commit, run.id)
        workdir = self.working_dir(run.id, source)
        # A symlink in the repository must not make the run work somewhere else on the host.
        inside = workdir.resolve().is_relative_to(base.resolve())
        if not inside or not workdir.is_dir():
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
        try:
            await mirror.fetch(credentials, source.token_env, head=ref is None)
        except SourceError as exc:
            if ref is None and "remote ref HEAD" in exc.message:
                raise SourceError(
                    f"{source.git} has no HEAD branch to run (its HEAD names a branch that does "
                    "not exist)",
                    hint="give the deployment's source a ref (a branch, tag or commit)",
                ) from exc
            raise
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
