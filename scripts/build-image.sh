#!/usr/bin/env bash
# Builds the flowagent image (agent + server) on the local Python base image; never pulls.
#
# The image is built without network access: the wheels of flowagent[server,docker,postgres] and its
# dependencies are fetched here, on the host, for the base image's Python version and machine,
# into build/docker-wheels/, and the Dockerfile's builder stage installs them from there with
# pip run straight from its wheel (Debian's python3 has no ensurepip/pip).
#
#   FLOWAGENT_IMAGE       tag to build (default flowagent/agent:local)
#   FLOWAGENT_BASE_IMAGE  base image (default flowagent/python-base:bookworm; see build-base-image.sh)
#   PYTHON                the interpreter whose pip fetches wheels (default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."

TAG="${FLOWAGENT_IMAGE:-flowagent/agent:local}"
BASE="${FLOWAGENT_BASE_IMAGE:-flowagent/python-base:bookworm}"
PYTHON="${PYTHON:-.venv/bin/python}"
WHEELS=build/docker-wheels

if ! docker image inspect "$BASE" >/dev/null 2>&1; then
    echo "build-image.sh: base image $BASE is missing; run scripts/build-base-image.sh as root" >&2
    exit 1
fi
# The wheels must fit the image's Python, not necessarily the host's.
read -r pyver machine < <(docker run --rm "$BASE" python3 -c \
    'import platform, sys; print(f"{sys.version_info[0]}{sys.version_info[1]}", platform.machine())')

rm -rf "$WHEELS"
mkdir -p "$WHEELS/app" "$WHEELS/deps"
echo "==> wheels for cp$pyver/$machine -> $WHEELS"
# A fixed timestamp makes the project's wheel reproducible, so unchanged code hits the cache.
SOURCE_DATE_EPOCH=315532800 "$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$WHEELS/app" .
project_wheel="$(ls "$WHEELS"/app/flowagent-*.whl)"
"$PYTHON" -m pip download --quiet --dest "$WHEELS/deps" --only-binary=:all: \
    --python-version "$pyver" --implementation cp --abi "cp$pyver" --abi abi3 --abi none \
    --platform "manylinux2014_$machine" --platform "manylinux_2_28_$machine" \
    --platform "manylinux_2_34_$machine" --platform any \
    "$project_wheel[server,docker,postgres]" pip 2> >(grep -v "is ignored: it is neither" >&2)
rm -f "$WHEELS"/deps/flowagent-*.whl

echo "==> docker build -> $TAG (on $BASE)"
docker build --quiet --build-arg "BASE_IMAGE=$BASE" --tag "$TAG" . >/dev/null
docker run --rm --entrypoint /opt/flowagent/bin/agent "$TAG" --version
