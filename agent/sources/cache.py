"""What the supervisor asks of sources: a run's code on disk, at one recorded version.

``prepare`` resolves a git deployment's ref to a commit (asking the remote with one
``ls-remote``, or taking the commit an earlier attempt of the run recorded), fetches it into the
host's mirror only when it is missing there, and copies the commit's cached tree (built from the
mirror once per commit) for the run; or gets a bundle into the host's cache, checked against its
digest when its tree is built, and copies that tree for the run. Every failure is a
:class:`SourceError` whose message the run is FAILED with.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Protocol, runtime_checkable
from uuid import UUID

import structlog

from agent.errors import FlowAgentError, SourceError
from agent.models import BundleSource, FlowRun, GitSource, RunSource
from agent.sources.bundle import extract
from agent.sources.bundles import BundleCache
from agent.sources.checkout import Checkouts, archive_into
from agent.sources.git import Credentials
from agent.sources.mirror import Mirror, looks_like_commit
from agent.sources.spares import Spares
from agent.sources.trees import Manifest, Trees

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
        self.spares = Spares(checkouts.parent / "spares")
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

        digest, bundles = source.bundle, self.bundles
        name = bundles.name(digest)

        async def build(stale: Manifest | None) -> Manifest:
            # The archive is hashed (and downloaded again if damaged) before it is unpacked.
            archive = await bundles.get(digest, download)
            return await bundles.trees.build(
                name, partial(extract, archive), bundles.fingerprint(digest), stale=stale
            )

        async with bundles.in_use(digest):
            manifest = bundles.trees.read(name)
            if manifest is not None and manifest.origin != bundles.fingerprint(digest):
                # The archive changed on disk since its tree was built: check it again.
                manifest = await build(manifest)
            target = await self._copy(run.id, bundles.trees, name, manifest, build)
        log.info("source_ready", bundle=source.bundle, checkout=str(target))
        return PreparedSource(target, RunSource(bundle=source.bundle))

    async def _prepare_git(self, run: FlowRun, source: GitSource) -> PreparedSource:
        credentials = self.credentials(source)
        mirror = self.mirror(source.git)
        recorded = run.source if run.source is not None and run.source.git == source.git else None
        async with mirror.in_use():
            if recorded is not None and recorded.commit is not None:
                commit = recorded.commit
                if self.trees(mirror).read(commit) is None:  # its tree needs the mirror to have it
                    await self._recorded_commit(mirror, commit, source, credentials)
            else:
                commit = await self._resolve(mirror, source, credentials)
            mirror.record_use()
            trees = self.trees(mirror)

            async def build(stale: Manifest | None) -> Manifest:
                if not await mirror.has_commit(commit):  # its tree was there, and went
                    await self._recorded_commit(mirror, commit, source, credentials)
                fill = partial(archive_into, mirror.path, commit)
                return await trees.build(commit, fill, stale=stale)

            base = await self._copy(run.id, trees, commit, trees.read(commit), build)
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

    def trees(self, mirror: Mirror) -> Trees:
        """The mirror's commits, unpacked: ``sources/trees/git/<key>/<commit>/``."""
        return Trees(self.root.parent / "trees" / "git" / mirror.key)

    async def _copy(
        self,
        run_id: UUID,
        trees: Trees,
        name: str,
        manifest: Manifest | None,
        build: Callable[[Manifest | None], Awaitable[Manifest]],
    ) -> Path:
        """Copy tree ``name`` into the run's checkout, building it first when it is missing
        and again when it changed on disk since it was sealed."""
        target = self.checkouts.path(run_id)
        self.checkouts.remove(run_id)
        stale = None
        for _ in range(3):
            if manifest is None:
                manifest = await build(stale)
            if await self.spares.take(trees, name, manifest, target) or await trees.copy(
                name, manifest, target
            ):
                self.spares.refill(trees, name, manifest)
                return target
            log.warning("source_tree_changed", tree=str(trees.path(name)))
            stale, manifest = manifest, None
        raise SourceError(
            f"the cached tree {trees.path(name)} keeps changing while runs copy it",
            hint="something on the agent's host writes into $AGENT_HOME/sources",
        )

    async def _have(self, mirror: Mirror, commit: str) -> bool:
        """Whether ``commit`` can be checked out without a fetch; a tree of it answers without
        starting git."""
        return self.trees(mirror).read(commit) is not None or await mirror.has_commit(commit)

    async def _resolve(self, mirror: Mirror, source: GitSource, credentials: Credentials) -> str:
        ref = source.ref
        if looks_like_commit(ref):
            # A commit never moves: no need to ask the remote.
            if await self._have(mirror, str(ref)):
                return str(ref)
        else:
            # One ls-remote says what the ref is now; a commit the mirror has (or has a tree
            # of) needs no fetch. The branch's head as the remote has it: no older.
            listed = await mirror.remote_commit(ref, credentials)
            if listed is not None and await self._have(mirror, listed):
                return listed
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

    async def close(self) -> None:
        """The agent is stopping: no more spare copies."""
        await self.spares.close()
