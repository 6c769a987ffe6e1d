"""Git sources over ssh: a real sshd of the test's own on loopback, real keys, real agents.

The agent passes git the ssh setup of its host: here ``GIT_SSH_COMMAND`` in the agent's
environment names an ssh config file (the host alias, its port, the key, the known hosts), as
an operator would set in the agent's systemd ``EnvironmentFile``.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.gitrepos import FLOW, make_repo
from tests.support import (
    Server,
    make_deployment,
    make_queue,
    make_run,
    require,
    server_fixture,
    start_agent,
    stop,
    wait_for,
    wait_state,
)

pytestmark = pytest.mark.integration

server = server_fixture("sources-ssh")
SSHD = Path("/usr/sbin/sshd")
ALIAS = "flows-ssh"


def _missing() -> str | None:
    if not SSHD.exists():
        return f"{SSHD} is missing (apt-get install openssh-server; scripts/ci-setup.sh does)"
    for tool in ("ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            return f"{tool} is missing (apt-get install openssh-client)"
    return None


def _keygen(path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)],
        check=True,
    )


@dataclass
class Sshd:
    port: int
    user: str
    dir: Path
    key: Path  # the client key sshd takes

    def ssh_command(self, key: Path | None = None) -> str:
        """The agent's GIT_SSH_COMMAND: its own ssh config, as the agent host would have."""
        config = self.dir / f"ssh_config-{uuid.uuid4().hex[:6]}"
        config.write_text(
            f"Host {ALIAS}\n"
            "  HostName 127.0.0.1\n"
            f"  Port {self.port}\n"
            f"  User {self.user}\n"
            "Host *\n"
            f"  IdentityFile {key or self.key}\n"
            "  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {self.dir / 'known_hosts'}\n"
            "  GlobalKnownHostsFile /dev/null\n"
            "  StrictHostKeyChecking yes\n"
        )
        return f"ssh -F {config} -o BatchMode=yes"


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    """sshd on a free loopback port: a generated host key, one authorized client key."""
    require(_missing())
    home = tmp_path / "sshd"
    home.mkdir()
    for name in ("host_key", "client_key", "stranger_key"):
        _keygen(home / name)
    shutil.copy(home / "client_key.pub", home / "authorized_keys")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    host_pub = (home / "host_key.pub").read_text().split()
    (home / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    user = getpass.getuser()
    (home / "sshd_config").write_text(
        f"ListenAddress 127.0.0.1\n"
        f"HostKey {home / 'host_key'}\n"
        f"AuthorizedKeysFile {home / 'authorized_keys'}\n"
        f"PidFile {home / 'sshd.pid'}\n"
        f"AllowUsers {user}\n"
        "PermitRootLogin prohibit-password\n"
        "PubkeyAuthentication yes\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "UsePAM no\n"
        # pytest's tmp directories are not laid out the way StrictModes wants a home.
        "StrictModes no\n"
    )
    if os.geteuid() == 0:
        # Privilege separation needs it; systemd makes it at boot, a CI container may not have.
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    log = (home / "sshd.log").open("wb")
    process = subprocess.Popen(
        [str(SSHD), "-D", "-e", "-f", str(home / "sshd_config"), "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    def listening() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"sshd exited: {(home / 'sshd.log').read_text()}")
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port)) == 0

    try:
        wait_for(listening, timeout=20, what="sshd to listen")
        yield Sshd(port, user, home, home / "client_key")
    finally:
        stop(process)
        log.close()


@pytest.fixture
def agent_on(server: Server, tmp_path: Path) -> Iterator[Any]:
    started: list[subprocess.Popen[bytes]] = []

    def start(queue: dict[str, Any], **env: str) -> Path:
        home = tmp_path / f"agent-{len(started)}"
        home.mkdir()
        started.append(
            start_agent(
                server,
                queue["id"],
                "--name",
                f"ssh-{time.monotonic_ns()}",
                log_path=home / "agent.log",
                AGENT_HOME=str(home),
                **env,
            )
        )
        return home

    yield start
    for process in started:
        if process.poll() is None:
            assert stop(process) == 0, f"agent exited {process.returncode}"


def test_ssh_and_scp_style_urls_run_with_the_agent_hosts_ssh_config(
    api, agent_on, sshd, tmp_path
) -> None:
    repo = make_repo(tmp_path / "git")
    head = repo.commit({"flows/hello.py": FLOW, "flows/VERSION": "v1\n"}, "first")
    urls = {
        "ssh": f"ssh://{sshd.user}@127.0.0.1:{sshd.port}{repo.bare}",
        # scp style has no port: the host alias of the agent's ssh config gives it.
        "scp": f"{sshd.user}@{ALIAS}:{repo.bare}",
    }
    queue = make_queue(api)
    deployments = {
        kind: make_deployment(
            api,
            queue,
            working_dir=None,
            entrypoint="hello.py:main",
            source={"git": url, "ref": "main", "path": "flows"},
        )
        for kind, url in urls.items()
    }
    agent_on(queue, GIT_SSH_COMMAND=sshd.ssh_command())
    out = tmp_path / "out"
    out.mkdir()

    for kind, deployment in deployments.items():
        for _ in range(2):  # cold (clone), then warm (ls-remote only)
            target = out / uuid.uuid4().hex
            done = wait_state(
                api,
                make_run(api, deployment, parameters={"out": str(target)})["id"],
                timeout=60,
            )
            assert done["state"]["type"] == "COMPLETED", (kind, done["state"])
            assert done["source"]["commit"] == head
            assert Path(f"{target}-1").read_text().splitlines()[0] == "v1"


def test_a_key_the_server_refuses_fails_the_run_with_gits_message(
    api, agent_on, sshd, tmp_path
) -> None:
    repo = make_repo(tmp_path / "git")
    repo.commit({"flows/hello.py": FLOW, "flows/VERSION": "v1\n"}, "first")
    url = f"ssh://{sshd.user}@127.0.0.1:{sshd.port}{repo.bare}"
    queue = make_queue(api)
    deployment = make_deployment(
        api, queue, working_dir=None, entrypoint="hello.py:main", source={"git": url}
    )
    agent_on(queue, GIT_SSH_COMMAND=sshd.ssh_command(sshd.dir / "stranger_key"))

    run = make_run(api, deployment, parameters={"out": str(tmp_path / "never")})
    done = wait_state(api, run["id"], timeout=60)

    assert done["state"]["type"] == "FAILED"
    message = done["state"]["message"]
    assert f"git fetch failed: {url}" in message
    assert "Permission denied (publickey)" in message
    assert "credentials refused" in message and "ssh key" in message
    assert done["source"] is None
