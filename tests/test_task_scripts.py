"""The task scripts directly, on valkey and fakeredis: advance's `task` outcome
(includes/tasks.lua), completeTask-2 and patchTask-2, their error codes included."""

from __future__ import annotations

import json

import pytest

from seqd import ids, models
from seqd.store.db import Store
from seqd.store.scripts import ScriptError
from seqd.store.settles import TaskStep, advance_args
from tests.dispatchutil import TENANT, claim, enroll, raw, sequence, sms
from tests.lifecycleutil import contact

HOUR = 3_600_000


def task_step(**fields: object) -> models.StepIn:
    return models.StepIn(kind="task", title="Call", **fields)  # type: ignore[arg-type]


async def _held(s: Store, blocking: bool = True) -> tuple[str, int, str, int]:
    """An enrollment whose task step was settled at `now`: (enrollment id, shard, task id,
    now)."""
    cid = await contact(s)
    seq = await sequence(s, task_step(blocking=blocking, due_in_minutes=60), sms())
    (e,) = await enroll(s, seq, [cid])
    sh = ids.shard_of(e.id, s.shards)
    now = ids.time_of(e.id) + 1
    (item,) = (await claim(s, sh, now)).items
    tid = ids.new_in_shard(ids.TASK, sh, s.shards, now)
    outcome = TaskStep(
        id=e.id, token=item.enrollment.token, step=0, kind="task", at=now, wait=0,
        task_id=tid, title="Call Ada", assignee="grace", due_in=HOUR, blocking=blocking,
    )  # fmt: skip
    items, groups, values = advance_args([outcome], None, now)
    keys = [s.keys.heads(sh), s.keys.outbox(sh)]
    tag = s.keys.shard_tag(sh)
    await s.runner.call("advance", keys, [tag, now, 3, items, groups, *values], tag=tag)
    return e.id, sh, tid, now


async def test_a_blocking_task_is_made_once_and_holds_its_enrollment(any_store: Store) -> None:
    s = any_store
    eid, sh, tid, now = await _held(s)
    h = await raw(s, eid)
    assert (h["st"], h["pr"], h["p0"], h["n"]) == ("paused", "awaiting_task", tid, str(now + HOUR))
    seq = h["s"]
    assert await s.client.zscore(s.keys.queue(sh, seq), eid) == now + HOUR
    task = await s.client.hgetall(s.keys.task(sh, tid))
    assert (task["st"], task["as"], task["b"], task["d"]) == ("open", "grace", "1", str(now + HOUR))
    for status, assignee in (("", None), ("open", None), ("", "grace"), ("open", "grace")):
        assert await s.client.zrange(s.keys.task_index(sh, TENANT, status, assignee), 0, -1) == [
            tid
        ]
    # The hold comes due: claimed again (a paused member other than a hold is dropped).
    (item,) = (await claim(s, sh, now + HOUR)).items
    assert (item.id, item.enrollment.status) == (eid, "paused")


async def test_complete_task_releases_the_hold_and_refuses_what_it_must(any_store: Store) -> None:
    s = any_store
    eid, sh, tid, now = await _held(s)
    keys = [s.keys.heads(sh), s.keys.outbox(sh)]
    tag = s.keys.shard_tag(sh)
    with pytest.raises(ScriptError) as info:
        await s.runner.call("completeTask", keys, [tag, now, "other", tid, ""], tag=tag)
    assert info.value.code == "NOT_FOUND"
    flat = await s.runner.call("completeTask", keys, [tag, now + 5, TENANT, tid, "done"], tag=tag)
    task = dict(zip(flat[::2], flat[1::2], strict=True))
    assert (task["st"], task["o"], task["fa"]) == ("completed", "done", str(now + 5))
    h = await raw(s, eid)
    assert (h["st"], h["n"], h.get("pr")) == ("active", str(now + 5), None)
    assert await s.client.zscore(s.keys.queue(sh, h["s"]), eid) == now + 5
    assert await s.client.zrange(s.keys.task_index(sh, TENANT, "open", None), 0, -1) == []
    assert await s.client.zrange(s.keys.task_index(sh, TENANT, "completed", "grace"), 0, -1) == [
        tid
    ]
    # Again: nothing changes (the outcome stays the first).
    flat = await s.runner.call("completeTask", keys, [tag, now + 9, TENANT, tid, "x"], tag=tag)
    assert dict(zip(flat[::2], flat[1::2], strict=True))["o"] == "done"


async def test_patch_task_moves_the_hold_and_its_listings(any_store: Store) -> None:
    s = any_store
    eid, sh, tid, now = await _held(s)
    keys = [s.keys.heads(sh), s.keys.outbox(sh)]
    tag = s.keys.shard_tag(sh)
    with pytest.raises(ScriptError) as info:
        await s.runner.call("patchTask", keys, [tag, now, TENANT, tid, "not json"], tag=tag)
    assert info.value.code == "BAD_ITEMS"
    changes = json.dumps({"assignee": "alan", "due_at": now + 2 * HOUR})
    await s.runner.call("patchTask", keys, [tag, now, TENANT, tid, changes], tag=tag)
    assert await s.client.zrange(s.keys.task_index(sh, TENANT, "open", "grace"), 0, -1) == []
    assert await s.client.zrange(s.keys.task_index(sh, TENANT, "open", "alan"), 0, -1) == [tid]
    h = await raw(s, eid)
    assert h["n"] == str(now + 2 * HOUR)
    assert await s.client.zscore(s.keys.queue(sh, h["s"]), eid) == now + 2 * HOUR
    # No due time: the hold leaves the queue (only completing the task ends it).
    await s.runner.call("patchTask", keys, [tag, now, TENANT, tid, '{"due_at": null}'], tag=tag)
    assert await s.client.zscore(s.keys.queue(sh, h["s"]), eid) is None
    await s.runner.call("completeTask", keys, [tag, now + 1, TENANT, tid, ""], tag=tag)
    with pytest.raises(ScriptError) as info:
        await s.runner.call("patchTask", keys, [tag, now, TENANT, tid, '{"due_at": 1}'], tag=tag)
    assert (info.value.code, info.value.detail) == ("INVALID_TRANSITION", "completed")


async def test_advance_refuses_a_task_without_its_id(any_store: Store) -> None:
    s = any_store
    cid = await contact(s)
    seq = await sequence(s, task_step())
    (e,) = await enroll(s, seq, [cid])
    sh = ids.shard_of(e.id, s.shards)
    now = ids.time_of(e.id) + 1
    (item,) = (await claim(s, sh, now)).items
    bad = {"id": e.id, "token": item.enrollment.token, "step": 0, "kind": "task", "at": now}
    keys = [s.keys.heads(sh), s.keys.outbox(sh)]
    tag = s.keys.shard_tag(sh)
    with pytest.raises(ScriptError) as info:
        await s.runner.call(
            "advance", keys, [tag, now, 3, json.dumps([{**bad, "outcome": "task", "wait": 0}])],
            tag=tag,
        )  # fmt: skip
    assert info.value.code == "BAD_ITEMS"
    assert (await raw(s, e.id))["st"] == "active"
