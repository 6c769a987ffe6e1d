"""Sealed trees and spare copies (agent/sources/trees.py, spares.py), on a real filesystem."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from agent.sources.spares import Spares
from agent.sources.trees import Manifest, Trees, remove_tree


def fill(root: Path) -> None:
    (root / "pkg").mkdir()
    (root / "pkg" / "mod.py").write_text("x = 1\n")
    (root / "run.sh").write_text("#!/bin/sh\n")
    (root / "run.sh").chmod(0o755)
    (root / "link").symlink_to("/etc")  # kept as a link, never followed


def build(trees: Trees, name: str = "c1", stale: Manifest | None = None) -> Manifest:
    return asyncio.run(trees.build(name, fill, stale=stale))


def copy(trees: Trees, manifest: Manifest, target: Path, name: str = "c1") -> bool:
    return asyncio.run(trees.copy(name, manifest, target))


def test_a_tree_is_sealed_read_only_and_complete_only_with_its_manifest(tmp_path: Path) -> None:
    trees = Trees(tmp_path / "trees")
    assert trees.read("c1") is None

    manifest = build(trees)

    tree = trees.path("c1")
    assert sorted(manifest.entries) == ["link", "pkg", "pkg/mod.py", "run.sh"]
    assert (tree / "pkg" / "mod.py").stat().st_mode & 0o777 == 0o444
    assert (tree / "run.sh").stat().st_mode & 0o777 == 0o555
    assert (tree / "pkg").stat().st_mode & 0o777 == 0o555
    assert (tree / "link").is_symlink() and Path("/etc").stat().st_mode & 0o200  # not chmod-ed
    assert trees.read("c1") == manifest and trees.names() == ["c1"]
    # Without its manifest (an agent died before writing it) the tree is not there.
    (tmp_path / "trees" / "c1.manifest").unlink()
    assert trees.read("c1") is None
    rebuilt = build(trees)
    assert trees.read("c1") == rebuilt


def test_each_copy_is_the_runs_own_and_writable(tmp_path: Path) -> None:
    trees = Trees(tmp_path / "trees")
    manifest = build(trees)
    one, two = tmp_path / "one", tmp_path / "two"

    assert copy(trees, manifest, one) and copy(trees, manifest, two)

    (one / "pkg" / "mod.py").write_text("changed by run one\n")
    (one / "new.txt").write_text("left by run one\n")
    assert (two / "pkg" / "mod.py").read_text() == "x = 1\n"
    assert not (two / "new.txt").exists()
    assert (trees.path("c1") / "pkg" / "mod.py").read_text() == "x = 1\n"
    assert os.stat(two / "run.sh").st_mode & 0o777 == 0o755
    assert os.stat(two / "pkg").st_mode & 0o777 == 0o755
    assert os.readlink(two / "link") == "/etc"
    assert os.stat(two / "pkg" / "mod.py").st_ino != os.stat(one / "pkg" / "mod.py").st_ino


def test_a_tree_changed_on_disk_is_refused_and_built_again(tmp_path: Path) -> None:
    trees = Trees(tmp_path / "trees")
    manifest = build(trees)
    changed = trees.path("c1") / "pkg" / "mod.py"
    changed.chmod(0o644)
    changed.write_text("x = 2\n")  # same size, a new mtime and ctime
    target = tmp_path / "run"

    assert copy(trees, manifest, target) is False
    assert not target.exists()  # nothing half-copied is left for a run

    fresh = build(trees, stale=manifest)
    assert fresh != manifest
    assert copy(trees, fresh, target)
    assert (target / "pkg" / "mod.py").read_text() == "x = 1\n"
    # A file added is caught too: its directory's ctime moved (root needs no chmod to add one).
    added = tmp_path / "added"
    if os.geteuid() != 0:
        (trees.path("c1") / "pkg").chmod(0o755)
    (trees.path("c1") / "pkg" / "extra.py").write_text("")
    assert copy(trees, fresh, added) is False


def test_a_spare_is_taken_once_and_only_for_the_manifest_it_was_made_from(
    tmp_path: Path,
) -> None:
    trees = Trees(tmp_path / "trees")
    spares = Spares(tmp_path / "spares", keep=1, delay=0)

    async def scenario() -> None:
        manifest = await trees.build("c1", fill)
        spares.refill(trees, "c1", manifest)
        spares.refill(trees, "c1", manifest)  # one on its way already: no second
        await asyncio.sleep(0.2)
        assert len(list((tmp_path / "spares").iterdir())) == 1
        assert await spares.take(trees, "c1", manifest, tmp_path / "run1")
        assert (tmp_path / "run1" / "pkg" / "mod.py").read_text() == "x = 1\n"
        assert not await spares.take(trees, "c1", manifest, tmp_path / "run2")  # taken
        spares.refill(trees, "c1", manifest)
        await asyncio.sleep(0.2)
        other = Manifest({}, None)
        assert not await spares.take(trees, "c1", other, tmp_path / "run3")  # tree built since
        assert list((tmp_path / "spares").iterdir()) == []
        # At most ``keep`` trees have a spare: the least recently made one goes.
        second = await trees.build("c2", fill)
        spares.refill(trees, "c1", manifest)
        await asyncio.sleep(0.2)
        spares.refill(trees, "c2", second)
        await asyncio.sleep(0.2)
        assert len(list((tmp_path / "spares").iterdir())) == 1
        assert await spares.take(trees, "c2", second, tmp_path / "run4")
        await spares.close()
        assert not (tmp_path / "spares").exists()

    asyncio.run(scenario())


def test_remove_tree_removes_a_sealed_tree(tmp_path: Path) -> None:
    trees = Trees(tmp_path / "trees")
    build(trees)
    remove_tree(trees.path("c1"))
    assert not trees.path("c1").exists()
    assert Path("/etc").is_dir()  # the link inside was removed, not followed
