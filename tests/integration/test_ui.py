"""The web UI in a real browser (Debian's chromium driven by Playwright) against a real server
and a real agent: what a person does on each page, and what they must never see.

Screenshots of every main page are saved under the test's tmp dir for a person to look at.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import psutil
import pytest

from tests.support import (
    FLOWS,
    Server,
    cli,
    free_port,
    make_deployment,
    make_queue,
    make_run,
    running_server,
    server_fixture,
    start_agent,
    stop,
    unavailable,
    wait_for,
    wait_state,
)

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = pytest.mark.integration

TIMEOUT_MS = 30_000
REBOUND = "rebound.example"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One chromium for the whole module (each test gets its own context)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("Playwright is not installed: pip install -e '.[dev]'")
    executable = shutil.which("chromium")
    if executable is None:
        unavailable("no chromium on PATH: apt-get install chromium (scripts/ci-setup.sh)")
    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where chromium's sandbox refuses to start. The resolver
        # rule plays a DNS-rebinding attacker's name that resolves to this machine.
        launched = playwright.chromium.launch(
            executable_path=executable,
            args=["--no-sandbox", f"--host-resolver-rules=MAP {REBOUND} 127.0.0.1"],
        )
        try:
            yield launched
        finally:
            launched.close()


server = server_fixture("ui")


@pytest.fixture(scope="module")
def queue(server: Server) -> Iterator[dict[str, Any]]:
    """A queue made with the CLI, and a real agent serving it."""
    name = f"ui-{time.monotonic_ns()}"
    cli(server, "work-queue", "create", name)
    with server.client() as api:
        found = dict(api.get(f"work_queues/name/{name}").json())
    agent = start_agent(server, found["id"], "--name", f"ui-agent-{time.monotonic_ns()}")
    yield found
    assert stop(agent) == 0


class Watched:
    """A page whose script errors and console errors fail the test."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        page.on("pageerror", lambda error: self.errors.append(f"pageerror: {error}"))
        page.on(
            "console",
            lambda msg: self.errors.append(f"console: {msg.text}") if msg.type == "error" else None,
        )

        def dismiss(dialog: Any) -> None:
            self.dialogs.append(dialog.message)
            dialog.dismiss()

        page.on("dialog", dismiss)
        page.set_default_timeout(TIMEOUT_MS)


@pytest.fixture
def page(browser: Browser) -> Iterator[Watched]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    watched = Watched(context.new_page())
    try:
        yield watched
    finally:
        context.close()
    assert watched.errors == [], watched.errors
    assert watched.dialogs == [], f"a script ran and opened a dialog: {watched.dialogs}"


def origin(server: Server) -> str:
    return server.url.removesuffix("/api")


def deploy(server: Server, queue: dict[str, Any], entrypoint: str, *params: str) -> dict[str, Any]:
    """A deployment made with the CLI, as a user would."""
    name = f"d-{time.monotonic_ns()}"
    args = ["deployment", "create", entrypoint, "--name", name, "--queue", queue["name"]]
    args += ["--workdir", str(FLOWS)]
    for param in params:
        args += ["--param", param]
    cli(server, *args)
    with server.client() as api:
        return dict(api.get(f"deployments/name/{name}").json())


def state_is(page: Page, state: str) -> None:
    page.locator("#state").filter(has_text=state).wait_for()


def test_run_from_the_deployment_page_streams_its_logs_until_completed(
    server: Server, queue: dict[str, Any], page: Watched, api: httpx.Client, tmp_path: Path
) -> None:
    deployment = deploy(server, queue, "sample.py:phases", f"marker_dir={tmp_path}", "during=2")
    p = page.page
    p.goto(f"{origin(server)}/#/deployments/{deployment['id']}")
    field = p.locator("#param-during")
    assert field.input_value() == "2"  # the default, filled in
    # A value that is not JSON is refused before anything is sent.
    field.fill("{oops")
    p.click("#run-submit")
    p.locator("#run-problem").filter(has_text="not valid JSON").wait_for()
    assert api.get("flow_runs", params={"deployment_id": deployment["id"]}).json() == []

    field.fill("4")
    p.click("#run-submit")
    p.wait_for_url("**/#/runs/*")
    run_id = p.url.rsplit("/", 1)[1]
    p.evaluate("window.__sameDocument = true")  # gone if anything reloads the page
    logs = p.locator("#logs")
    logs.filter(has_text="before").wait_for()
    state_is(p, "RUNNING")  # the line came while the run was going on
    assert "after" not in logs.inner_text()
    p.screenshot(path=str(tmp_path / "run-live.png"), full_page=True)
    (tmp_path / "go-1").touch()
    logs.filter(has_text="during 3").wait_for()
    (tmp_path / "go-2").touch()
    state_is(p, "COMPLETED")
    logs.filter(has_text="after").wait_for()
    assert p.evaluate("window.__sameDocument") is True
    p.locator("#result").filter(has_text='"result": "done"').wait_for()
    p.screenshot(path=str(tmp_path / "run-completed.png"), full_page=True)

    run = api.get(f"flow_runs/{run_id}").json()
    assert run["parameters"]["during"] == 4 and run["state"]["type"] == "COMPLETED"
    assert len(list(tmp_path.glob("exec-*.json"))) == 1  # one execution


def test_cancel_a_long_run_from_its_page(
    server: Server, queue: dict[str, Any], page: Watched, api: httpx.Client, tmp_path: Path
) -> None:
    pidfile = tmp_path / "pid"
    deployment = deploy(server, queue, "sample.py:sleep", "seconds=120", f"pidfile={pidfile}")
    run = make_run(api, deployment)
    p = page.page
    p.goto(f"{origin(server)}/#/runs/{run['id']}")
    state_is(p, "RUNNING")
    pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text(), what="the flow's pid"))
    assert psutil.pid_exists(pid)
    p.click("#cancel")
    state_is(p, "CANCELLED")
    assert p.locator("#cancel").is_disabled()
    wait_for(lambda: not psutil.pid_exists(pid), timeout=15, what=f"process {pid} to be gone")
    assert api.get(f"flow_runs/{run['id']}").json()["state"]["type"] == "CANCELLED"


def test_retry_a_failed_run_from_its_page(
    server: Server, queue: dict[str, Any], page: Watched, api: httpx.Client, tmp_path: Path
) -> None:
    deployment = deploy(server, queue, "sample.py:fail_first", f"marker_dir={tmp_path}")
    run = make_run(api, deployment)
    assert wait_state(api, run["id"])["state"]["type"] == "FAILED"
    p = page.page
    p.goto(f"{origin(server)}/#/runs/{run['id']}")
    state_is(p, "FAILED")
    p.locator("#logs").filter(has_text="attempt 1 fails on purpose").wait_for()
    p.click("#retry")
    p.locator("#attempt").filter(has_text="2").wait_for()
    state_is(p, "COMPLETED")
    p.locator("#logs").filter(has_text="attempt 2").wait_for()
    assert p.locator("#history li").count() == 8  # both attempts' states, in order
    attempts = sorted(json.loads(m.read_text())["attempt"] for m in tmp_path.glob("*.json"))
    assert attempts == [1, 2]
    # COMPLETED now: the button is off, and the server would refuse it anyway.
    assert p.locator("#retry").is_disabled()


def test_rerun_from_a_run_page_with_a_changed_parameter(
    server: Server, queue: dict[str, Any], page: Watched, api: httpx.Client
) -> None:
    deployment = deploy(server, queue, "sample.py:add", "a=1", "b=2")
    run = make_run(api, deployment)
    wait_state(api, run["id"])
    p = page.page
    p.goto(f"{origin(server)}/#/runs/{run['id']}")
    p.click("#rerun")
    p.fill("#rerun-parameters", '{"a": 1, "b": 2,}')
    p.click("#rerun-form button[type=submit]")
    p.locator("#rerun-form .error").filter(has_text="Not sent").wait_for()
    p.fill("#rerun-parameters", '{"a": 20, "b": 2}')
    p.click("#rerun-form button[type=submit]")
    p.wait_for_url(lambda url: run["id"] not in url and "/#/runs/" in url)
    state_is(p, "COMPLETED")
    p.locator("#result").filter(has_text="22").wait_for()
    assert p.locator("#rerun-of").inner_text() == run["id"]


def test_a_log_line_holding_html_is_shown_as_text(
    server: Server, queue: dict[str, Any], page: Watched, api: httpx.Client
) -> None:
    evil = '<script>alert(1)</script><img src=x onerror="alert(2)"><b>bold</b>'
    deployment = make_deployment(api, queue, entrypoint="sample.py:say", parameters={"text": evil})
    run = make_run(api, deployment)
    wait_state(api, run["id"])
    p = page.page
    p.goto(f"{origin(server)}/#/runs/{run['id']}")
    p.locator("#logs").filter(has_text="<script>alert(1)</script>").wait_for()
    assert evil in p.locator("#logs").inner_text()
    assert p.locator("#logs script, #logs img, #logs b").count() == 0
    assert p.locator("#parameters").inner_text().count("<script>") == 1  # as text there too
    # (the page fixture fails the test if any dialog opened)


def test_with_an_api_key_the_ui_demands_it_and_refuses_a_wrong_one(
    browser: Browser, tmp_path: Path
) -> None:
    key = "ui-secret-key"
    with running_server(tmp_path / "secured", extra_env={"AGENT_API_KEY": key}) as secured:
        with secured.client(api_key=key) as api:
            hidden = make_queue(api)
            run = make_run(api, make_deployment(api, hidden, command=["true"]))
        context = browser.new_context()
        try:
            p = Watched(context.new_page()).page
            p.goto(f"{origin(secured)}/#/runs/{run['id']}")
            p.locator("#login").wait_for()
            assert p.locator("#nav").is_hidden()
            assert hidden["name"] not in p.content() and run["id"] not in p.inner_text("body")

            p.fill("#api-key", "not-the-key")
            p.click("#login button[type=submit]")
            p.locator("#login .error").filter(has_text="refused").wait_for()
            assert hidden["name"] not in p.content()
            assert p.evaluate("sessionStorage.length") == 0

            p.fill("#api-key", key)
            p.click("#login button[type=submit]")
            p.locator("#state").wait_for()  # the deep link opens once unlocked
            assert p.locator("#nav").is_visible()
            assert key not in p.url
            assert p.evaluate("Object.values(sessionStorage)") == [key]
            p.goto(f"{origin(secured)}/#/queues")
            p.locator(f"[data-queue='{hidden['name']}']").wait_for()
            # A new tab of a new session starts locked again (sessionStorage, not a cookie).
            assert context.cookies() == []
        finally:
            context.close()


def test_every_page_renders_and_its_actions_work(
    server: Server, queue: dict[str, Any], page: Watched, api: httpx.Client, tmp_path: Path
) -> None:
    deployment = deploy(server, queue, "sample.py:boom")
    failed = make_run(api, deployment)
    wait_state(api, failed["id"])
    cli(server, "deployment", "schedule", "add", deployment["name"], "--interval", "1h")
    p = page.page
    base = origin(server)
    shots = tmp_path / "screenshots"
    shots.mkdir()

    p.goto(f"{base}/#/")
    p.locator(".chart").wait_for()
    assert int(p.locator("[data-count=FAILED]").inner_text()) >= 1
    p.locator(".callout.failed").filter(has_text=failed["name"]).wait_for()
    p.locator("#agents-online").filter(has_text="1 /").wait_for()
    p.screenshot(path=str(shots / "overview.png"), full_page=True)

    p.goto(f"{base}/#/runs")
    p.locator("table").filter(has_text=failed["name"]).wait_for()
    p.select_option("#filter-state", "COMPLETED")
    p.click("#run-filters button[type=submit]")
    p.wait_for_url("**state=COMPLETED**")
    p.locator("table, .empty").first.wait_for()
    assert failed["name"] not in p.inner_text("main")
    p.select_option("#filter-state", "FAILED")
    p.click("#run-filters button[type=submit]")
    p.locator("table").filter(has_text=failed["name"]).wait_for()
    p.fill("#filter-until", "2001-01-01T00:00")  # in the browser's time zone
    p.click("#run-filters button[type=submit]")
    p.locator(".empty").filter(has_text="No run matches").wait_for()
    p.fill("#filter-until", "")
    p.click("#run-filters button[type=submit]")
    p.locator("table").filter(has_text=failed["name"]).wait_for()
    p.screenshot(path=str(shots / "runs.png"), full_page=True)

    p.goto(f"{base}/#/runs/{failed['id']}")
    p.locator("#logs").filter(has_text="about to fail").wait_for()
    p.screenshot(path=str(shots / "run.png"), full_page=True)

    p.goto(f"{base}/#/deployments")
    p.locator("table").filter(has_text=deployment["name"]).wait_for()
    p.screenshot(path=str(shots / "deployments.png"), full_page=True)
    p.click(f"text={deployment['name']}")
    p.locator("section").filter(has_text="every 3600").wait_for()  # its schedule, next run
    p.screenshot(path=str(shots / "deployment.png"), full_page=True)

    p.goto(f"{base}/#/queues")
    toggle = p.locator(f"[data-toggle='{queue['name']}']")
    assert toggle.inner_text() == "Pause"
    toggle.click()
    p.locator(f"[data-queue='{queue['name']}']").filter(has_text="paused").wait_for()
    assert api.get(f"work_queues/{queue['id']}").json()["paused"] is True
    p.locator(f"[data-toggle='{queue['name']}']").click()
    p.locator(f"[data-queue='{queue['name']}']").filter(has_text="ready").wait_for()
    assert api.get(f"work_queues/{queue['id']}").json()["paused"] is False
    p.locator(f"[data-preview='{queue['name']}']").click()
    p.locator("#preview").filter(has_text=deployment["name"]).wait_for()  # the scheduled run
    p.screenshot(path=str(shots / "queues.png"), full_page=True)

    p.goto(f"{base}/#/agents")
    p.locator(".ag-ONLINE").first.wait_for()
    p.screenshot(path=str(shots / "agents.png"), full_page=True)
    assert sorted(path.name for path in shots.iterdir()) == [
        "agents.png",
        "deployment.png",
        "deployments.png",
        "overview.png",
        "queues.png",
        "run.png",
        "runs.png",
    ]
    print(f"screenshots: {shots}")


def test_a_fresh_server_explains_how_to_start(browser: Browser, tmp_path: Path) -> None:
    with running_server(tmp_path / "fresh") as fresh:
        context = browser.new_context()
        try:
            p = Watched(context.new_page()).page
            for route in ("#/", "#/deployments", "#/queues"):
                p.goto(f"{origin(fresh)}/{route}")
                p.locator(".empty").filter(has_text="agent work-queue create").wait_for()
            p.goto(f"{origin(fresh)}/#/agents")
            p.locator(".empty").filter(has_text="agent start").wait_for()
            p.goto(f"{origin(fresh)}/#/runs")
            p.locator(".empty").filter(has_text="No flow run yet").wait_for()
        finally:
            context.close()


def test_another_site_cannot_make_the_browser_cancel_a_run(
    server: Server, browser: Browser, api: httpx.Client
) -> None:
    run = make_run(api, make_deployment(api, make_queue(api), command=["true"]))  # no agent
    context = browser.new_context()  # not the watched page: the 403 is the expected outcome
    try:
        p = context.new_page()
        # A page from elsewhere (here: no origin at all) posting a form at the server, as a
        # malicious site would; the server has no API key, so only the cross-site check stands.
        action = f"{server.url}/flow_runs/{run['id']}/cancel"
        p.set_content(f'<form id="f" method="post" action="{action}"></form>')
        with p.expect_navigation():
            p.evaluate("document.getElementById('f').submit()")
        assert "cross-site request refused" in p.inner_text("body")
    finally:
        context.close()
    assert api.get(f"flow_runs/{run['id']}").json()["state"]["type"] == "SCHEDULED"


def test_the_log_tail_picks_up_again_after_a_server_restart(
    browser: Browser, tmp_path: Path
) -> None:
    home, markers, port = tmp_path / "server", tmp_path / "markers", free_port()
    markers.mkdir()
    # Not the watched page: while the server is down, the browser logs the failed requests.
    context = browser.new_context()
    agent = None
    try:
        p = context.new_page()
        p.set_default_timeout(TIMEOUT_MS)
        with running_server(home, port=port) as first:
            with first.client() as api:
                queue = make_queue(api)
                deployment = make_deployment(
                    api,
                    queue,
                    entrypoint="sample.py:phases",
                    parameters={"marker_dir": str(markers)},
                )
                run = make_run(api, deployment)
            agent = start_agent(first, queue["id"])
            p.goto(f"{origin(first)}/#/runs/{run['id']}")
            p.locator("#logs").filter(has_text="before").wait_for()
            state_is(p, "RUNNING")
        p.locator("#stream-status").filter(has_text="reconnecting").wait_for()
        with running_server(home, port=port):
            (markers / "go-1").touch()
            (markers / "go-2").touch()
            state_is(p, "COMPLETED")
            p.locator("#stream-status").filter(has_text="run ended").wait_for()
            # Every line once, in order: the stream went on after the last line it had shown.
            shown = p.locator("#logs .line span").all_inner_texts()
            assert shown == ["before", "during 0", "during 1", "during 2", "after"]
            assert stop(agent) == 0
    finally:
        if agent is not None:
            stop(agent)
        context.close()


def test_a_rebound_name_gets_nothing_from_a_server_without_a_key(
    server: Server, queue: dict[str, Any], browser: Browser
) -> None:
    port = server.url.split(":")[2].split("/")[0]
    context = browser.new_context()  # not the watched page: the 403s are the expected outcome
    try:
        p = context.new_page()
        # To the browser this page and the server are one origin; only the Host header differs.
        response = p.goto(f"http://{REBOUND}:{port}/#/queues")
        assert response is not None and response.status == 403
        assert "DNS-rebinding" in p.inner_text("body")
        answer = p.evaluate("fetch('/api/work_queues').then((r) => r.status)")
        assert answer == 403
        assert queue["name"] not in p.content()
    finally:
        context.close()
