"""The spool on its own: what a damaged directory leaves it holding, and what it sets aside."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from agent.spool import Entry, Spool


def test_stray_and_half_written_files_are_set_aside_and_numbering_goes_on(tmp_path: Path) -> None:
    run = uuid.uuid4()
    first = Spool(tmp_path)
    first.put("state", run, {"type": "COMPLETED"})
    (tmp_path / f"000000000001-state-{run}.json.tmp").write_text('{"type": "FA')  # a crash mid-put
    (tmp_path / "README").write_text("hello")
    (tmp_path / "000000000002-state-not-a-uuid-at-all-xxxxxxxxxxxxxxxx.json").write_text("{}")

    again = Spool(tmp_path)
    assert len(again) == 1 and again.run_ids() == {run}
    assert sorted(p.name for p in (tmp_path / "damaged").iterdir()) == sorted(
        [
            f"000000000001-state-{run}.json.tmp",
            "README",
            "000000000002-state-not-a-uuid-at-all-xxxxxxxxxxxxxxxx.json",
        ]
    )
    again.put("logs", run, {"batch_id": str(uuid.uuid4()), "lines": []})
    assert sorted(p.name[:12] for p in tmp_path.glob("*.json")) == ["000000000000", "000000000001"]

    # A third life: the damaged/ directory is left alone, and a second stray of the same name
    # does not overwrite the first one set aside.
    (tmp_path / "README").write_text("again")
    third = Spool(tmp_path)
    assert len(third) == 2
    assert (tmp_path / "damaged" / "README").read_text() == "hello"
    assert (tmp_path / "damaged" / "README.1").read_text() == "again"

    delivered: list[Entry] = []

    async def deliver(entry: Entry) -> None:
        delivered.append(entry)

    assert asyncio.run(third.drain(deliver)) == 2
    assert [e.kind for e in delivered] == ["state", "logs"] and len(third) == 0
    assert third.run_ids() == set()
