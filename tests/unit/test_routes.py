"""The API's route modules are matched one after another in ``API_MODULES``' order, chosen for
speed (a fleet's heartbeats first). That is safe only while no request could be taken by a
route of another module than its own: checked here for every pair of routes."""

from __future__ import annotations

import re

from fastapi.routing import APIRoute
from starlette.routing import compile_path

from agent.server.app import API_MODULES


def api_routes() -> list[tuple[str, str, set[str]]]:
    """(module, path, methods) of every API route."""
    found = []
    for module in API_MODULES:
        for route in module.router.routes:
            assert isinstance(route, APIRoute)
            found.append((module.__name__, "/api" + route.path, set(route.methods)))
    return found


def example_path(path: str) -> str:
    """A request path that ``path``'s route takes: each parameter given a value."""
    return re.sub(r"\{[^}]+\}", "6f1c2e0a-3b7d-4c55-9a1e-0d2b8c4f7a19", path)


def test_no_route_takes_a_request_meant_for_another_module() -> None:
    routes = api_routes()
    assert len(routes) > 40  # every module's routes, not an empty list
    taken = [
        f"{method} {example_path(path)} ({module}) would be taken by {other_path} ({other})"
        for module, path, methods in routes
        for other, other_path, other_methods in routes
        if other != module
        for method in sorted(methods & other_methods)
        if compile_path(other_path)[0].match(example_path(path))
    ]
    assert taken == []


def test_the_check_sees_an_overlap() -> None:
    # The same matching as above, on two paths that do overlap.
    assert compile_path("/api/flow_runs/{run_id}")[0].match(example_path("/api/flow_runs/{x}"))
