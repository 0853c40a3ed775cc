"""Task steps across a restart of a real `seqd serve`: a blocking task's hold, made by one
process, ends in the next one, by completion through the API and by its timeout (the
enrollment's entry in the due index: no other poller, nothing in memory)."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from seqd.store.db import Store
from seqd.times import now_ms, to_rfc3339
from tests.opsutil import Daemon, call

pytestmark = pytest.mark.slow


async def _until(check: Callable[[], bool], what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"not in time: {what}"
        await asyncio.sleep(0.1)


async def test_a_task_hold_ends_in_the_next_process(
    store: Store, store_url: str, prefix: str, tmp_path: Path
) -> None:
    _, key = await store.tenants.create_key("acme")
    first = Daemon(store_url, prefix, tmp_path / "first").start()
    try:
        first.wait_healthy()
        steps = [
            {
                "kind": "task",
                "title": "Call {{first_name}}",
                "due_in_minutes": 60,
                "blocking": True,
            },
            {"kind": "sms", "body": "Hi {{first_name}}"},
        ]
        sid = call(
            first, key, "POST", "/sequences", {"name": "s", "status": "active", "steps": steps}
        )["sequence"]["id"]
        people = [{"contact": {"first_name": "Ada", "phone": f"+1415555010{n}"}} for n in (0, 1)]
        path = f"/sequences/{sid}/enrollments"
        eids = [call(first, key, "POST", path, p)["enrollment"]["id"] for p in people]

        def held() -> bool:
            got = [call(first, key, "GET", f"/enrollments/{e}")["enrollment"] for e in eids]
            return all(e.get("paused_reason") == "awaiting_task" for e in got)

        await _until(held, "both enrollments held by their tasks")
        first.signal(signal.SIGTERM)
        assert first.wait() == 0, first.stderr()
    finally:
        first.stop()

    second = Daemon(store_url, prefix, tmp_path / "second").start()
    try:
        second.wait_healthy()
        tasks = {t["enrollment_id"]: t for t in call(second, key, "GET", "/tasks")["data"]}
        completed, timed_out = eids
        call(second, key, "POST", f"/tasks/{tasks[completed]['id']}/complete", {})
        soon = to_rfc3339(now_ms() + 500)
        call(second, key, "PATCH", f"/tasks/{tasks[timed_out]['id']}", {"due_at": soon})

        def finished() -> bool:
            got = [call(second, key, "GET", f"/enrollments/{e}")["enrollment"] for e in eids]
            return all(e["status"] == "completed" for e in got)

        await _until(finished, "both enrollments to go on and complete")
        listed = call(second, key, "GET", "/tasks")["data"]
        statuses = {t["enrollment_id"]: t["status"] for t in listed}
        assert statuses == {completed: "completed", timed_out: "timed_out"}
        second.signal(signal.SIGTERM)
        assert second.wait() == 0, second.stderr()
    finally:
        second.stop()
