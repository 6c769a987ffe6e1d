"""The live log stream's wake-ups: no poke lost between a read and the wait, nothing kept for
runs nobody watches."""

from __future__ import annotations

import uuid

import anyio

from agent.server.log_stream import LogFeed


def test_a_poke_during_the_read_is_not_lost() -> None:
    async def scenario() -> None:
        feed = LogFeed()
        run = uuid.uuid4()
        with feed.watching(run):
            seen = feed.version(run)
            feed.poke(run)  # lines stored while the stream was reading the database
            with anyio.fail_after(10):  # the wait would last 60 s had the poke been lost
                await feed.wait(run, seen, timeout=60)

    anyio.run(scenario)


def test_a_poke_wakes_the_streams_of_that_run_only() -> None:
    async def scenario() -> list[str]:
        feed = LogFeed()
        run, other = uuid.uuid4(), uuid.uuid4()
        woken: list[str] = []

        async def watch(name: str, run_id: uuid.UUID) -> None:
            with feed.watching(run_id):
                await feed.wait(run_id, feed.version(run_id), timeout=60)
                woken.append(name)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as group:
                group.start_soon(watch, "first", run)
                group.start_soon(watch, "second", run)
                group.start_soon(watch, "other", other)
                await anyio.wait_all_tasks_blocked()
                feed.poke(run)
                await anyio.wait_all_tasks_blocked()
                seen = sorted(woken)
                group.cancel_scope.cancel()
        return seen

    assert anyio.run(scenario) == ["first", "second"]


def test_nothing_is_kept_once_nobody_watches() -> None:
    async def scenario() -> LogFeed:
        feed = LogFeed()
        run = uuid.uuid4()
        feed.poke(run)  # nobody watches: ignored
        with feed.watching(run), feed.watching(run):
            await feed.wait(run, feed.version(run), timeout=0.01)
            feed.poke(run)
            assert feed.version(run) == 1
        return feed

    feed = anyio.run(scenario)
    assert vars(feed) == {"_watchers": {}, "_versions": {}, "_events": {}}
