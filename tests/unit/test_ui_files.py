"""The web UI's files, read as text: shipped in the wheel, no way for data to become markup,
nothing the Content-Security-Policy would block, no module import that points nowhere."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path, PurePosixPath

REPO = Path(__file__).resolve().parents[2]
UI = REPO / "agent" / "server" / "ui"
FILES = sorted(path for path in UI.rglob("*") if path.is_file())
SCRIPTS = [path for path in FILES if path.suffix == ".js"]


def test_every_ui_file_is_package_data() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    globs = config["tool"]["setuptools"]["package-data"]["agent.server"]
    assert FILES
    for path in FILES:
        relative = PurePosixPath(path.relative_to(UI.parent).as_posix())  # ui/js/app.js
        # Setuptools globs do not cross directories: "ui/*" is not "ui/js/app.js".
        assert any(
            relative.match(glob) and len(relative.parts) == len(PurePosixPath(glob).parts)
            for glob in globs
        ), f"{relative} would be left out of the wheel: add it to [tool.setuptools.package-data]"


def test_no_script_turns_text_into_markup() -> None:
    # The UI escapes by construction: nodes and text only (dom.js). These are the doors around it.
    doors = re.compile(
        r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function"
    )
    for path in SCRIPTS:
        found = doors.findall(path.read_text())
        assert not found, f"{path.name} uses {found}"


def test_the_page_has_nothing_inline_for_the_csp_to_block() -> None:
    html = (UI / "index.html").read_text()
    assert "<style" not in html and " style=" not in html
    scripts = re.findall(r"<script[^>]*>(.*?)</script>", html, flags=re.S)
    assert scripts == [""], "inline script: the CSP (script-src 'self') blocks it"
    assert not re.search(r"\son[a-z]+=", html), "an inline event handler: the CSP blocks it"
    for path in SCRIPTS:
        urls = re.findall(r"https?://[^'\"` ]+", path.read_text())
        assert set(urls) <= {"http://www.w3.org/2000/svg"}, f"{path.name} names {urls}"


def test_every_module_import_resolves() -> None:
    for path in SCRIPTS:
        for target in re.findall(r"from '(\./[^']+)'", path.read_text()):
            assert (path.parent / target).is_file(), f"{path.name} imports {target}: no such file"
    for target in re.findall(
        r'src="/ui/([^"]+)"|href="/ui/([^"]+)"', (UI / "index.html").read_text()
    ):
        name = next(part for part in target if part)
        assert (UI / name).is_file(), name
