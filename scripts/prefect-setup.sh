#!/usr/bin/env bash
# Installs the Prefect servers the conformance suite talks to, each in its own virtual env at
# the repository root. Idempotent: a venv whose `prefect` already imports is left alone.
#
#   scripts/prefect-setup.sh          .prefect-venv  with prefect>=3,<4 (about 30 s)
#   scripts/prefect-setup.sh --with-2 also .prefect2-venv with prefect==2.20.27 (the seed's)
#
# Neither venv has flowagent installed: they stand for a user's Prefect environment (the server
# and the flows' interpreter), which the agent reaches only over HTTP and through `python -m
# prefect.engine`.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"

install() {
    local venv="$1" spec="$2"
    if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import prefect' >/dev/null 2>&1; then
        echo "==> $venv: prefect $("$venv/bin/python" -c 'import prefect; print(prefect.__version__)') (already installed)"
        return
    fi
    echo "==> $venv: installing $spec"
    "$PYTHON" -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip
    "$venv/bin/pip" install --quiet "$spec"
    echo "==> $venv: prefect $("$venv/bin/python" -c 'import prefect; print(prefect.__version__)')"
}

install .prefect-venv 'prefect>=3,<4'
case "${1:-}" in
    --with-2) install .prefect2-venv 'prefect==2.20.27' ;;
    "") ;;
    *) echo "usage: $0 [--with-2]" >&2; exit 2 ;;
esac
