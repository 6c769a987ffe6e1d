"""Real git for tests: bare repositories made here, served over file:// or loopback HTTP.

The HTTP server runs ``git http-backend`` (git's own smart-HTTP CGI) behind a small threaded
handler that can demand a token as Basic auth, the way hosting services take one.
"""

from __future__ import annotations

import base64
import contextlib
import os
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.invalid",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
    "HOME": "/nonexistent",
}


def git(*args: str, cwd: Path | None = None) -> str:
    result = subprocess.run(
        ["git", *args],
        cwd=cwd,
        env=os.environ | GIT_ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"git {' '.join(args)}: {result.stderr}"
    return result.stdout.strip()


@dataclass
class Repo:
    """A bare repository and a work tree that pushes to it."""

    bare: Path
    work: Path

    @property
    def url(self) -> str:
        return self.bare.as_uri()

    def commit(self, files: dict[str, str], message: str = "change", branch: str = "main") -> str:
        for name, text in files.items():
            path = self.work / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        git("add", "-A", cwd=self.work)
        git("commit", "-q", "-m", message, cwd=self.work)
        git("push", "-q", "origin", f"HEAD:refs/heads/{branch}", cwd=self.work)
        return git("rev-parse", "HEAD", cwd=self.work)

    def head(self, branch: str = "main") -> str:
        return git("--git-dir", str(self.bare), "rev-parse", f"refs/heads/{branch}")


def make_repo(root: Path, name: str = "flows") -> Repo:
    bare, work = root / f"{name}.git", root / f"{name}-work"
    git("init", "-q", "--bare", "-b", "main", str(bare))
    git("init", "-q", "-b", "main", str(work))
    git("remote", "add", "origin", str(bare), cwd=work)
    return Repo(bare, work)


@dataclass
class GitHttp:
    """``git http-backend`` over loopback HTTP for the repositories under ``root``."""

    root: Path
    token: str | None = None
    port: int = 0
    requests: list[str] = field(default_factory=list)

    def url(self, repo: Repo) -> str:
        return f"http://127.0.0.1:{self.port}/{repo.bare.relative_to(self.root)}"


def _handler(server: GitHttp) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            # Protocol v2 lists refs (ls-remote, a fetch's first step) in a POST of its own:
            # say which command a POST carries, so that tests can count real fetches.
            asked = b" ls-refs" if b"command=ls-refs" in body else b""
            server.requests.append(f"{self.command} {self.path}{asked.decode()}")
            if server.token is not None:
                expected = base64.b64encode(f"x-access-token:{server.token}".encode()).decode()
                if self.headers.get("Authorization") != f"Basic {expected}":
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="git"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
            path, _, query = self.path.partition("?")
            env = os.environ | {
                "GIT_PROJECT_ROOT": str(server.root),
                "GIT_HTTP_EXPORT_ALL": "1",
                "PATH_INFO": path,
                "QUERY_STRING": query,
                "REQUEST_METHOD": self.command,
                "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                "CONTENT_LENGTH": str(len(body)),
                "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
                "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
                "REMOTE_ADDR": "127.0.0.1",
            }
            result = subprocess.run(
                ["git", "http-backend"], input=body, env=env, capture_output=True, timeout=60
            )
            head, _, payload = result.stdout.partition(b"\r\n\r\n")
            status = 200
            headers = []
            for line in head.decode().split("\r\n"):
                key, _, value = line.partition(": ")
                if key.lower() == "status":
                    status = int(value.split()[0])
                elif key:
                    headers.append((key, value))
            self.send_response(status)
            for key, value in headers:
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = _serve
        do_POST = _serve

    return Handler


@contextlib.contextmanager
def serving(root: Path, token: str | None = None) -> Iterator[GitHttp]:
    served = GitHttp(root, token)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(served))
    served.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, name="git-http", daemon=True)
    thread.start()
    try:
        yield served
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def loose_objects(bare: Path) -> int:
    """Objects stored loose: small fetches are unpacked, so this counts what a fetch brought."""
    out = git("--git-dir", str(bare), "count-objects", "-v")
    counts = dict(line.split(": ") for line in out.splitlines())
    return int(counts["count"]) + int(counts["in-pack"])


FLOW = """\
import os
import pathlib


def main(out: str) -> str:
    # From the flow's own directory: the in-process runner does not chdir (docs/RUNNERS.md).
    here = pathlib.Path(__file__).resolve().parent
    version = (here / "VERSION").read_text().strip()
    try:  # the Docker runner mounts the checkout read-only
        (here / "probe").write_text("x")
        mode = "rw"
    except OSError:
        mode = "ro"
    # The in-process runner does not set the run's environment in the agent's either.
    attempt = os.environ.get("FLOWAGENT_ATTEMPT", "1")
    pathlib.Path(f"{out}-{attempt}").write_text(f"{version}\\n{here}\\n{mode}\\n")
    return version
"""
