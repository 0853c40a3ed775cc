"""Consumer groups keep no consumers of processes that are gone: a clean stop removes the
reader's own, and the readers forget the killed ones that hold nothing (real server)."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import pytest

from seqd.config import Config, IntakeConfig, WebhooksConfig
from seqd.events.reader import MAINTENANCE_MS, Reader
from seqd.intake import Intake
from seqd.store import groups
from seqd.store.db import Store
from seqd.store.outbox import GROUP
from tests.webhookutil import Clock

GROUP_NAME = "g"


@pytest.fixture
def stream() -> str:
    """A stream of this test's own (the server is shared by the tests)."""
    return f"groups-test-{secrets.token_hex(4)}"


async def _names(store: Store, stream: str, group: str) -> set[str]:
    rows: list[dict[str, Any]] = await store.client.xinfo_consumers(stream, group)
    return {str(r["name"]) for r in rows}


async def test_prune_forgets_idle_consumers_that_hold_nothing(store: Store, stream: str) -> None:
    c = store.client
    await c.xgroup_create(stream, GROUP_NAME, id="0", mkstream=True)
    await c.xadd(stream, {"n": 1})
    await c.xadd(stream, {"n": 2})
    # "done" read and acknowledged its entry; "holder" read one and holds it.
    [(_, [(first, _)])] = await c.xreadgroup(GROUP_NAME, "done", {stream: ">"}, count=1)
    await c.xack(stream, GROUP_NAME, first)
    await c.xreadgroup(GROUP_NAME, "holder", {stream: ">"}, count=1)
    await c.xgroup_createconsumer(stream, GROUP_NAME, "never-read")
    # Nobody has been idle ten minutes: nothing goes.
    assert await groups.prune(c, stream, GROUP_NAME, 600_000) == []
    await asyncio.sleep(0.03)
    gone = await groups.prune(c, stream, GROUP_NAME, 20)
    assert sorted(gone) == ["done", "never-read"]
    # The one holding an entry stays, whatever its idle time: its entry is still owed.
    assert await _names(store, stream, GROUP_NAME) == {"holder"}
    assert await groups.prune(c, "no-such-stream", GROUP_NAME, 0) == []


async def test_drop_removes_a_consumer_only_when_it_holds_nothing(
    store: Store, stream: str
) -> None:
    c = store.client
    await c.xgroup_create(stream, GROUP_NAME, id="0", mkstream=True)
    await c.xadd(stream, {"n": 1})
    await c.xreadgroup(GROUP_NAME, "holder", {stream: ">"}, count=1)
    await c.xgroup_createconsumer(stream, GROUP_NAME, "idle")
    assert await groups.drop(c, stream, GROUP_NAME, "holder") is False
    assert await groups.drop(c, stream, GROUP_NAME, "idle") is True
    assert await _names(store, stream, GROUP_NAME) == {"holder"}


async def test_the_outbox_reader_leaves_its_group_on_stop_and_prunes_the_dead(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    config = WebhooksConfig()
    await store.outbox.ensure_group()
    outbox = store.keys.outbox(0)
    await store.client.xgroup_createconsumer(outbox, GROUP, "killed-long-ago")
    reader = Reader(store, config, consumer="me", clock=clock)
    await reader.run_once()
    assert "me" in await _names(store, outbox, GROUP)
    # Its housekeeping forgets consumers idle past the threshold (shortened here).
    monkeypatch.setattr(groups, "dead_after_ms", lambda lease_ms: 0)
    await asyncio.sleep(0.01)
    clock.advance(MAINTENANCE_MS)
    await reader.run_once()
    assert "killed-long-ago" not in await _names(store, outbox, GROUP)
    reader.start()
    await reader.stop()
    for shard in range(store.shards):
        assert "me" not in await _names(store, store.keys.outbox(shard), GROUP)


async def test_the_intake_forgets_a_killed_consumer_once_its_entries_are_taken_over(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = Config(intake=IntakeConfig(block_ms=50, lease_seconds=0.2))
    dying = Intake(config, store, consumer="dies")
    await dying.stream.ensure_group()
    await store.client.xadd(store.keys.intake(), {"tenant": "nobody", "sequence_id": "seq_x"})
    entries = await dying.stream.read("dies", 10, None)
    assert len(entries) == 1  # read, then the process is killed before finishing it
    await dying.stream.close()
    monkeypatch.setattr(groups, "dead_after_ms", lambda lease_ms: 100)
    survivor = Intake(config, store, consumer="survives")
    await asyncio.sleep(0.25)
    # The reclaim takes the entry over; "dies" then holds nothing and is forgotten.
    assert await survivor.run_once(block_ms=0) == 1
    assert await _names(store, store.keys.intake(), "seqd") == {"survives"}
    await survivor.stream.close()
