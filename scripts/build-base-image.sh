#!/usr/bin/env bash
# Builds the local Python base image the Docker tests run flows in: Debian bookworm (minbase) with
# python3, made by debootstrap and `docker import`, because no image registry is reachable.
# Cached by tag: does nothing when the image already exists. Needs root (debootstrap) and dockerd.
#
#   FLOWAGENT_BASE_IMAGE  tag to build (default flowagent/python-base:bookworm)
#   DEBIAN_MIRROR         where debootstrap downloads packages (default http://deb.debian.org/debian)
set -euo pipefail

TAG="${FLOWAGENT_BASE_IMAGE:-flowagent/python-base:bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

if docker image inspect "$TAG" >/dev/null 2>&1; then
    echo "==> $TAG already exists"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "build-base-image.sh: debootstrap needs root" >&2
    exit 1
fi

# Two CI jobs on one machine must not both build (or half-import) the same tag.
exec 9>/var/lock/flowagent-base-image.lock
flock 9
if docker image inspect "$TAG" >/dev/null 2>&1; then
    echo "==> $TAG was built meanwhile"
    exit 0
fi

work="$(mktemp -d /var/tmp/flowagent-rootfs.XXXXXX)"
trap 'rm -rf "$work"' EXIT

echo "==> debootstrap bookworm (minbase + python3) from $MIRROR"
debootstrap --variant=minbase --include=python3 bookworm "$work/rootfs" "$MIRROR" \
    >"$work/debootstrap.log" 2>&1 || {
    tail -n 40 "$work/debootstrap.log" >&2
    echo "build-base-image.sh: debootstrap failed (is $MIRROR reachable?)" >&2
    exit 1
}
# Package caches are half the size and of no use inside the image.
rm -rf "$work"/rootfs/var/cache/apt/archives/*.deb "$work"/rootfs/var/lib/apt/lists/*

echo "==> docker import -> $TAG"
# An imported image has no config: give it the PATH and UTF-8 locale a Dockerfile base would.
tar -C "$work/rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    - "$TAG" >/dev/null
docker run --rm "$TAG" python3 -c 'import sys; print("==> python", sys.version.split()[0])'
