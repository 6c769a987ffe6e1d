#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what the tests need (the package and its
# test tools in .venv; as root also docker.io, a running dockerd and the local Python base
# image; Prefect 3 and the seed's Prefect 2 in their own venvs), then runs lint, type checks
# and every test. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> .venv: flowagent with the server, postgres, docker and dev extras"
python3 -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
# compat: a plain path in a .pth file. The default editable mode installs an import finder
# that costs every Python start in this venv (agent, fence, each flow run) 12-16 ms; an installed
# package (a wheel) has none.
.venv/bin/pip install --quiet -e '.[server,postgres,docker,dev]' --config-settings editable_mode=compat \
    || .venv/bin/pip install --quiet -e '.[server,postgres,docker,dev]'  # a setuptools without compat mode

if [ "$(id -u)" -eq 0 ]; then
    bash scripts/ci-setup.sh
else
    echo "==> not root: no dockerd set-up (Docker tests skip unless CI is set; run scripts/ci-setup.sh as root)"
fi
bash scripts/prefect-setup.sh --with-2

echo "==> ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "==> mypy"
.venv/bin/mypy
echo "==> pytest (two workers; tests/conftest.py says which tests share one)"
.venv/bin/pytest -n 2 --dist loadscope "$@"
