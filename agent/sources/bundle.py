"""Uploaded bundles: a directory packed into a content-addressed archive.

``pack`` makes the same bytes from the same files (sorted entries, no times, owners or umask in
the archive), so re-uploading an unchanged directory stores nothing new on the server and its
digest (sha256 of the archive) names the content. ``.flowagentignore`` (gitignore syntax) leaves
files out; ``.git`` is always left out. A symbolic link is kept when it points inside the
directory and refused when it points out of it: a bundle never carries what the link pointed at
on the uploader's host.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import tarfile
from pathlib import Path
from typing import IO, TYPE_CHECKING

from agent.errors import InputError, SourceError

IGNORE_FILE = ".flowagentignore"
ALWAYS_LEFT_OUT = (".git/",)
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_CHUNK = 1 << 20

if TYPE_CHECKING:
    import pathspec


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def file_digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(_CHUNK):
            sha.update(chunk)
    return "sha256:" + sha.hexdigest()


def _ignored(root: Path) -> pathspec.GitIgnoreSpec:
    import pathspec  # the CLI's concern only: an agent never packs

    lines = list(ALWAYS_LEFT_OUT)
    ignore = root / IGNORE_FILE
    if ignore.is_file():
        lines += ignore.read_text().splitlines()
    return pathspec.GitIgnoreSpec.from_lines(lines)


def _files(root: Path) -> list[Path]:
    """Every path to pack, relative to ``root``, sorted; ignored ones left out."""
    spec = _ignored(root)
    found: list[Path] = []
    for directory, dirs, files in os.walk(root, followlinks=False):
        here = Path(directory)
        for name in sorted(dirs):
            path = here / name
            rel = path.relative_to(root).as_posix() + "/"
            if spec.match_file(rel):
                dirs.remove(name)
            elif path.is_symlink():  # os.walk lists a link to a directory among dirs
                dirs.remove(name)
                found.append(path.relative_to(root))
            else:
                found.append(path.relative_to(root))
        for name in files:
            path = here / name
            if not spec.match_file(path.relative_to(root).as_posix()):
                found.append(path.relative_to(root))
    return sorted(found, key=lambda p: p.as_posix())


def _check_link(root: Path, rel: Path) -> str:
    """The link's target as stored; refused when it leads out of ``root``."""
    path = root / rel
    target = os.readlink(path)
    resolved = (path.parent / target).resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise InputError(
            f"{rel.as_posix()} is a symbolic link to {target}, outside {root}: a bundle never "
            "follows links out of its directory",
            hint=f"copy what it points at into the directory, or list it in {IGNORE_FILE}",
        )
    return target


def pack(root: Path, max_bytes: int | None = None) -> bytes:
    """The directory as a gzipped tar, byte for byte the same for the same content."""
    if not root.is_dir():
        raise InputError(f"{root} is not a directory", hint="--upload takes a directory")
    buffer = io.BytesIO()
    # mtime=0 in the gzip header too: the same files must give the same digest.
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as zipped,
        tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        total = 0
        for rel in _files(root):
            path = root / rel
            info = tarfile.TarInfo(rel.as_posix())
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if path.is_symlink():
                info.type = tarfile.SYMTYPE
                info.linkname = _check_link(root, rel)
                info.mode = 0o777
                tar.addfile(info)
            elif path.is_dir():
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            elif path.is_file():
                info.size = path.stat().st_size
                info.mode = 0o755 if os.access(path, os.X_OK) else 0o644
                total += info.size
                if max_bytes is not None and total > max_bytes:
                    raise InputError(
                        f"{root} holds more than {max_bytes:,} bytes of files to upload",
                        hint=f"leave large files out with {IGNORE_FILE} (gitignore syntax)",
                    )
                with path.open("rb") as file:
                    tar.addfile(info, file)
            # sockets, fifos and devices have no place in a bundle: left out
    return buffer.getvalue()


def check_archive(archive: Path | IO[bytes]) -> None:
    """Refuse an archive that is not ours to unpack: absolute paths, '..', links out, devices.

    ``archive``: a file's path, or an open file (read from its start).
    """
    if not isinstance(archive, Path):
        archive.seek(0)
    try:
        with (
            tarfile.open(archive, mode="r:gz")
            if isinstance(archive, Path)
            else tarfile.open(fileobj=archive, mode="r:gz")
        ) as tar:
            for member in tar:
                tarfile.data_filter(member, "/bundle")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise SourceError(f"not a usable bundle: {exc}") from exc


def extract(path: Path, target: Path) -> None:
    """Unpack a verified bundle into a run's directory."""
    try:
        with tarfile.open(path, mode="r:gz") as tar:
            tar.extractall(target, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise SourceError(f"cannot unpack bundle {path.name}: {exc}") from exc
