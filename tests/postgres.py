"""A real, throwaway PostgreSQL for the tests: one cluster per session, one database per test.

The cluster lives in its own temporary directory on a free loopback port, made by Debian's
``initdb`` and run by ``pg_ctl`` (as the ``postgres`` user when we are root: the server refuses
to run as root, and the directory must be its own). ``CREATE DATABASE`` is cheap, so every test
gets an empty database of its own. A test that needs PostgreSQL fails in CI when it is missing
(``scripts/ci-setup.sh`` installs it) and skips elsewhere.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import free_port, require


def _bindir() -> Path | None:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
    )
    return Path(found[-1]).parent if found else None


def postgres_problem() -> str | None:
    """Why the tests cannot make a cluster here, or None."""
    if _bindir() is None:
        return "PostgreSQL is not installed (apt-get install postgresql; scripts/ci-setup.sh)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install -e '.[server,postgres,dev]')"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "there is no postgres user to run the cluster as"
    return None


@dataclass
class PostgresCluster:
    """A running cluster; :meth:`new_database` hands out empty databases on it."""

    bindir: Path
    directory: Path
    port: int
    user: str = "postgres"

    @property
    def data(self) -> Path:
        return self.directory / "data"

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{database}"

    def _as_owner(self, *argv: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else list(argv)

    def _ctl(self, *args: str, timeout: float = 60) -> None:
        subprocess.run(
            self._as_owner(str(self.bindir / "pg_ctl"), "-D", str(self.data), *args),
            check=True,
            capture_output=True,
            timeout=timeout,
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1"
        # fsync off: a throwaway cluster; a crash of the machine loses nothing we keep.
        options += " -c fsync=off -c max_connections=300"
        log = self.directory / "postgres.log"
        self._ctl("start", "-w", "-l", str(log), "-o", options)

    def stop(self, mode: str = "fast") -> None:
        self._ctl("stop", "-w", "-m", mode)

    def new_database(self) -> str:
        """An empty database of its own; its SQLAlchemy URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user={self.user} dbname=postgres", autocommit=True
        ) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def make_cluster() -> PostgresCluster:
    bindir = _bindir()
    assert bindir is not None
    # Not under pytest's tmp dir: that is private to us, and postgres must reach its own files.
    directory = Path(tempfile.mkdtemp(prefix="flowagent-pg-"))
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres", "postgres")
    cluster = PostgresCluster(bindir, directory, free_port())
    subprocess.run(
        cluster._as_owner(
            str(bindir / "initdb"),
            "-D",
            str(cluster.data),
            "-U",
            cluster.user,
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
        ),
        check=True,
        capture_output=True,
        timeout=120,
    )
    cluster.start()
    return cluster


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    require(postgres_problem())
    cluster = make_cluster()
    try:
        yield cluster
    finally:
        try:
            cluster.stop("immediate")
        finally:
            shutil.rmtree(cluster.directory, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_cluster: PostgresCluster) -> str:
    """A fresh, empty database on the session's cluster."""
    return postgres_cluster.new_database()
