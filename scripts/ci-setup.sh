#!/usr/bin/env bash
# Prepares a CI machine for the test suite; run as root before the tests. Idempotent: installs
# docker.io, debootstrap and the other packages below if missing, starts dockerd if it is not
# answering, then builds the local Python base image (cached by tag, so once per machine).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "ci-setup.sh: run me as root (installs packages, starts dockerd)" >&2
    exit 1
fi

missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)  # verifies our unit files
# debootstrap checks the Release signature with this keyring; without it it falls back to https.
[ -e /usr/share/keyrings/debian-archive-keyring.gpg ] || missing+=(debian-archive-keyring)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)  # the UI tests' browser
# The PostgreSQL tests make their own throwaway clusters with its initdb and pg_ctl.
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
# Git sources over ssh: the tests start their own sshd on loopback and connect with ssh.
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v ssh >/dev/null 2>&1 || missing+=(openssh-client)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "==> apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q "${missing[@]}"
fi

if ! docker info >/dev/null 2>&1; then
    log=/var/log/flowagent-dockerd.log
    echo "==> starting dockerd (log: $log)"
    # Its own session, so it outlives this script and a CI step's process group.
    setsid dockerd >>"$log" 2>&1 </dev/null &
    for _ in $(seq 120); do
        docker info >/dev/null 2>&1 && break
        sleep 0.5
    done
    if ! docker info >/dev/null 2>&1; then
        tail -n 40 "$log" >&2
        echo "ci-setup.sh: dockerd did not become ready within 60s" >&2
        exit 1
    fi
fi
echo "==> dockerd $(docker version --format '{{.Server.Version}}')"

bash scripts/build-base-image.sh
