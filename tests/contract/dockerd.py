"""What tests need from a real dockerd: reach it (or skip, outside CI), and see no leftovers.

CI runs ``scripts/ci-setup.sh`` first, which starts dockerd and builds the base image; a test
that needs them fails when ``CI`` is set and they are missing, and skips only when it is not.
"""

from __future__ import annotations

import contextlib
import functools
import os
import traceback
import warnings
from collections.abc import Iterator
from typing import Any

from tests.support import require

#: Built by scripts/build-base-image.sh (debootstrap + docker import); never pulled.
BASE_IMAGE = os.environ.get("FLOWAGENT_BASE_IMAGE", "flowagent/python-base:bookworm")
RUN_LABEL = "flowagent.run-id"


@functools.cache
def _problem() -> str | None:
    try:
        import docker
    except ImportError:
        return "the docker SDK is not installed (pip install 'flowagent[docker]')"
    # The SDK leaves a failed connection's socket open; it is dropped (and would be reported as
    # unclosed under filterwarnings=error) with the exception, here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            client = docker.from_env()
            client.ping()
        except Exception as exc:
            reason = str(exc)
            _clear(exc)
            return f"dockerd is not reachable ({reason}); run scripts/ci-setup.sh as root"
    try:
        client.images.get(BASE_IMAGE)
    except Exception:
        return f"image {BASE_IMAGE} is missing; run scripts/build-base-image.sh as root"
    finally:
        client.close()
    return None


def _clear(exc: BaseException | None) -> None:
    while exc is not None:
        traceback.clear_frames(exc.__traceback__)
        exc = exc.__cause__ or exc.__context__


def require_dockerd() -> None:
    """Fail (in CI) or skip (elsewhere) unless dockerd answers and the base image exists."""
    require(_problem())


def client() -> Any:
    import docker

    return docker.from_env()


def labelled(docker_client: Any, label: str) -> list[Any]:
    """The containers carrying ``label`` (``key`` or ``key=value``), running or not.

    The SDK lists, then inspects each container: one removed in between (an agent discarding a
    finished run's) makes it raise NotFound, and the list is simply taken again.
    """
    import docker

    for _ in range(20):
        with contextlib.suppress(docker.errors.NotFound):
            return list(docker_client.containers.list(all=True, filters={"label": label}))
    raise AssertionError(f"containers labelled {label} kept vanishing while listed")


def our_containers() -> dict[str, str]:
    """Every container carrying our run label, running or not: id -> name."""
    docker_client = client()
    try:
        return {c.id: c.name for c in labelled(docker_client, RUN_LABEL)}
    finally:
        docker_client.close()


@contextlib.contextmanager
def none_left_behind() -> Iterator[None]:
    """Require dockerd; after the body, remove the containers of ours it left, and fail if any."""
    require_dockerd()
    before = our_containers()
    yield
    left = set(our_containers()) - set(before)
    docker_client = client()
    for container_id in left:  # a failed test must not leave them to the next one
        docker_client.containers.get(container_id).remove(force=True)
    docker_client.close()
    assert not left, "containers left behind"
