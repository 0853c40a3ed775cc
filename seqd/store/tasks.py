"""Tasks of task steps: made by `advance` (includes/tasks.lua) in their enrollment's shard,
completed and edited through `completeTask` and `patchTask`, listed per tenant across the
shards by status and assignee."""

from __future__ import annotations

from typing import Any

import msgspec

from seqd import ids
from seqd.errors import Conflict, NotFound
from seqd.store import calls
from seqd.store.context import StoreContext
from seqd.store.scripts import ScriptError
from seqd.task_models import Task
from seqd.times import now_ms, to_rfc3339

_encode = msgspec.json.Encoder().encode


def _time(value: str | None) -> str | None:
    return None if not value else to_rfc3339(int(float(value)))


def task_of(tid: str, h: dict[str, str]) -> Task:
    """The API's task from its hash (the names are in includes/tasks.lua)."""
    return Task(
        id=tid,
        sequence_id=h["s"],
        enrollment_id=h["e"],
        contact_id=h["c"],
        step=int(h["i"]),
        title=h.get("ti", ""),
        assignee=h.get("as"),
        status=h["st"],  # type: ignore[arg-type]
        blocking=h.get("b") == "1",
        on_timeout="cancel" if h.get("to") == "cancel" else "continue",
        due_at=_time(h.get("d")),
        created_at=to_rfc3339(int(h["ca"])),
        updated_at=to_rfc3339(int(h.get("ua") or h["ca"])),
        completed_at=_time(h.get("fa")),
        outcome=h.get("o"),
    )


def _pairs(flat: list[Any]) -> dict[str, str]:
    return {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}


class Tasks:
    def __init__(self, store: StoreContext) -> None:
        self.store = store
        self.keys = store.keys

    def _shard(self, tid: str, tenant: str) -> int:
        if not ids.is_valid(tid, ids.TASK):
            raise NotFound(f"no task {tid}", field="id")
        return ids.shard_of(tid, self.keys.shards)

    async def get(self, tenant: str, tid: str) -> Task:
        key = self.keys.task(self._shard(tid, tenant), tid)
        h: dict[str, str] = await self.store.client.hgetall(key)  # type: ignore[assignment]
        if h.get("t") != tenant:
            raise NotFound(f"no task {tid}", field="id")
        return task_of(tid, h)

    async def list(
        self,
        tenant: str,
        *,
        status: str | None,
        assignee: str | None,
        limit: int,
        after: str | None,
    ) -> tuple[list[Task], str | None, int]:
        """A page of the tenant's tasks in id order (the order they were made), the cursor
        after it (None at the end) and the total."""
        index = [
            self.keys.task_index(shard, tenant, status or "", assignee)
            for shard in range(self.keys.shards)
        ]
        page, more = await self.store.merged_range(index, after, limit)
        pipe = self.store.client.pipeline(transaction=False)
        for tid in page:
            pipe.hgetall(self.keys.task(ids.shard_of(tid, self.keys.shards), tid))
        rows = await pipe.execute()
        data = [task_of(tid, h) for tid, h in zip(page, rows, strict=True) if h.get("t") == tenant]
        cursor = page[-1] if more and page else None
        return data, cursor, await self.store.total(index)

    async def _run(self, call: calls.Call, tid: str, action: str) -> Task:
        try:
            flat = await self.store.runner.run(call)
        except ScriptError as exc:
            if exc.code == "NOT_FOUND":
                raise NotFound(f"no task {tid}", field="id") from None
            if exc.code == "INVALID_TRANSITION":
                raise Conflict(
                    f"cannot {action} a task that is {exc.detail}", status=exc.detail
                ) from None
            raise
        return task_of(tid, _pairs(flat))

    async def complete(self, tenant: str, tid: str, outcome: str | None) -> Task:
        shard = self._shard(tid, tenant)
        call = calls.complete_task(self.keys, shard, now_ms(), tenant, tid, outcome or "")
        return await self._run(call, tid, "complete")

    async def patch(self, tenant: str, tid: str, changes: dict[str, Any]) -> Task:
        """`changes`: title, assignee (None clears), due_at (ms; None clears)."""
        shard = self._shard(tid, tenant)
        call = calls.patch_task(self.keys, shard, now_ms(), tenant, tid, _encode(changes))
        return await self._run(call, tid, "change the due time of")
