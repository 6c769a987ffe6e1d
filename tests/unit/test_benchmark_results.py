"""The benchmarks' record: ``latest.json`` is the last run of every section, never a part of one."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from benchmarks.cli import write_results

STARTED = dt.datetime(2026, 12, 8, 1, 2, 3, tzinfo=dt.UTC)


def test_a_whole_run_is_the_latest(tmp_path: Path) -> None:
    path = write_results(tmp_path, STARTED, False, {"run": "whole"}, {}, whole=True)
    assert path.name == "20261208T010203Z.json"
    assert json.loads((tmp_path / "latest.json").read_text())["meta"] == {"run": "whole"}


def test_a_run_of_some_sections_leaves_the_latest_alone(tmp_path: Path) -> None:
    write_results(tmp_path, STARTED, False, {"run": "whole"}, {}, whole=True)
    later = STARTED + dt.timedelta(hours=1)
    path = write_results(tmp_path, later, False, {"run": "--only fleet"}, {}, whole=False)
    assert json.loads(path.read_text())["meta"] == {"run": "--only fleet"}  # its own file
    assert json.loads((tmp_path / "latest.json").read_text())["meta"] == {"run": "whole"}
