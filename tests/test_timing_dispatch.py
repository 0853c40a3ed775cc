"""The dispatcher under schedules and quiet hours, driven by `run_once` with an injected
clock: the next step's time decided at the send, the send-time deferral, and a preview that
tells exactly what the dispatcher then does."""

from __future__ import annotations

from typing import Any

from seqd import ids
from seqd.config import Config, DispatchConfig
from seqd.engine.dispatcher import Dispatcher
from seqd.metrics import Metrics
from seqd.store.db import Store
from seqd.times import from_rfc3339, to_rfc3339
from seqd.timing.policy import Policy
from tests.conftest import Api
from tests.dispatchutil import Clock, OneSender, Recorder, events, raw
from tests.timingutil import NOW, local

NY = "America/New_York"
WEEKDAYS = {d: [["09:00", "17:00"]] for d in ("mon", "tue", "wed", "thu", "fri")}
STEPS: list[dict[str, Any]] = [
    {"kind": "sms", "body": "one"},
    {"kind": "sms", "wait_minutes": 600, "body": "two"},
    {"kind": "email", "wait_days": 2, "send_at": "10:00", "subject": "s", "body": "three"},
    {"kind": "sms", "wait_minutes": 30, "body": "four"},
]


def dispatcher(
    store: Store, clock: Clock, metrics: Metrics | None = None
) -> tuple[Dispatcher, Recorder]:
    sender = Recorder()
    d = Dispatcher(
        store, DispatchConfig(), OneSender(sender), clock=clock, observer=metrics,
        policy=Policy(Config()),
    )  # fmt: skip
    return d, sender


async def _setup(api: Api, windows: dict[str, list[list[str]]] = WEEKDAYS) -> tuple[str, str]:
    """A schedule, a sequence of STEPS under it and a New York contact: (sequence, contact)."""
    _, made = await api.call(
        "POST", "/schedules", {"name": "s", "windows": windows, "jitter_seconds": 300}
    )
    body = {"name": "S", "status": "active", "steps": STEPS, "schedule_id": made["schedule"]["id"]}  # type: ignore[index]
    _, seq = await api.call("POST", "/sequences", body)
    _, contact = await api.call(
        "POST", "/contacts", {"phone": "+12125550100", "email": "a@example.com"}
    )
    return seq["sequence"]["id"], contact["contact"]["id"]  # type: ignore[index]


async def test_the_preview_is_what_the_dispatcher_does(quiet_api: Api) -> None:
    sid, cid = await _setup(quiet_api)
    status, preview = await quiet_api.call(
        "POST", f"/sequences/{sid}/preview", {"contact_id": cid, "start_at": to_rfc3339(NOW)}
    )
    assert status == 200, preview
    planned = [from_rfc3339(s["send_at"]) for s in preview["steps"]]  # type: ignore[index]
    status, body = await quiet_api.call(
        "POST", f"/sequences/{sid}/enrollments", {"contact_id": cid}
    )
    assert status == 201, body
    eid = body["enrollment"]["id"]  # type: ignore[index]
    clock = Clock(NOW)
    d, sender = dispatcher(quiet_api.store, clock)
    sent_at = []
    for n, at in enumerate(planned):
        assert int((await raw(quiet_api.store, eid))["n"]) == at, n
        clock.at = at - 1
        assert (await d.run_once(clock.at)).claimed == 0  # not a moment early
        clock.at = at
        await d.run_once(clock.at)
        assert len(sender.messages) == n + 1
        sent_at.append(local(to_rfc3339(at), NY))
    # Jitter (up to 5 minutes) spreads the openings; the rest is the rules.
    assert [t[:13] for t in sent_at] == [
        "2026-04-06 09",  # Monday: the window opens
        "2026-04-07 09",  # +10 h is 19:00, closed: Tuesday's opening
        "2026-04-09 10",  # two open days later, at its send_at
        "2026-04-09 10",  # 30 minutes after
    ]
    assert (await raw(quiet_api.store, eid))["st"] == "completed"


async def test_a_step_due_in_a_closed_window_is_deferred_with_no_attempt(quiet_api: Api) -> None:
    store = quiet_api.store
    sid, cid = await _setup(quiet_api)
    _, body = await quiet_api.call("POST", f"/sequences/{sid}/enrollments", {"contact_id": cid})
    eid = body["enrollment"]["id"]  # type: ignore[index]
    due = int((await raw(store, eid))["n"])
    # The schedule changes before the step comes due: Mondays now open at 14:00.
    _, seq = await quiet_api.call("GET", f"/sequences/{sid}")
    schedule_id = seq["sequence"]["schedule_id"]  # type: ignore[index]
    windows = {**WEEKDAYS, "mon": [["14:00", "17:00"]]}
    status, _ = await quiet_api.call("PATCH", f"/schedules/{schedule_id}", {"windows": windows})
    assert status == 200
    clock, metrics = Clock(due), Metrics()
    d, sender = dispatcher(store, clock, metrics)
    done = await d.run_once(due)
    assert done.claimed == 1 and sender.messages == []
    h = await raw(store, eid)
    until = int(h["n"])
    assert local(to_rfc3339(until), NY)[:13] == "2026-04-06 14" and "a" not in h
    status, got = await quiet_api.call("GET", f"/enrollments/{eid}")
    enr = got["enrollment"]  # type: ignore[index]
    assert enr["deferred_reason"] == "window" and enr["next_run_at"] == to_rfc3339(until)
    assert (enr["timezone_used"], enr["timezone_source"]) == (NY, "phone")
    (deferred,) = [e for e in await events(store) if e["type"] == "sequence.step.deferred"]
    assert deferred["reason"] == "window" and deferred["until"] == until
    assert deferred["step"] == 0 and deferred["id"] == eid
    assert metrics.deferred.labels("window")._value.get() == 1
    # At the new opening it goes; the reason is gone with the step.
    clock.at = until
    await d.run_once(until)
    assert [m.body for m in sender.messages] == ["one"]
    status, got = await quiet_api.call("GET", f"/enrollments/{eid}")
    assert "deferred_reason" not in got["enrollment"]  # type: ignore[index]


async def test_a_contact_moved_to_a_zone_in_quiet_hours_is_deferred_to_its_morning(
    quiet_api: Api,
) -> None:
    store = quiet_api.store
    every_day = {d: [["00:00", "24:00"]] for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}
    sid, cid = await _setup(quiet_api, every_day)
    _, body = await quiet_api.call("POST", f"/sequences/{sid}/enrollments", {"contact_id": cid})
    eid = body["enrollment"]["id"]  # type: ignore[index]
    due = int((await raw(store, eid))["n"])
    assert local(to_rfc3339(due), NY)[:13] == "2026-04-06 08"  # quiet hours end (+ jitter)
    # Before it goes the contact says it lives in Honolulu, where it is 02:00.
    await quiet_api.call("PATCH", f"/contacts/{cid}", {"timezone": "Pacific/Honolulu"})
    d, sender = dispatcher(store, Clock(due))
    await d.run_once(due)
    assert sender.messages == []
    h = await raw(store, eid)
    assert local(to_rfc3339(int(h["n"])), "Pacific/Honolulu")[:13] == "2026-04-06 08"
    assert h["z"] == "c:Pacific/Honolulu" and h["dr"] == "0:quiet_hours"
    assert ids.is_valid(eid, ids.ENROLLMENT)


async def test_advance_refuses_a_defer_without_a_whole_until(store: Store) -> None:
    from seqd.store.dispatch import Dispatch
    from seqd.store.scripts import ScriptError
    from seqd.store.settles import Defer

    for reason, until in ((None, 5.5), ("window", 5.5)):
        item = Defer(id="enr_x", token="1", step=0, kind="sms", at=1, until=until, reason=reason)  # type: ignore[arg-type]
        try:
            await Dispatch(store).advance(0, [item], now=1, max_attempts=3)
        except ScriptError as exc:
            assert exc.code == "BAD_ITEMS", exc
        else:
            raise AssertionError(f"accepted {reason!r}, {until}")


async def test_the_preview_with_senders_and_a_cap_is_what_the_dispatcher_does(
    quiet_api: Api,
) -> None:
    """Senders (a sticky SMS pool, an email sender with a daily cap of one) and an SMS cap
    of one a day move steps as the preview says, from the senders it names."""
    api, store = quiet_api, quiet_api.store
    made = {}
    for name, body in {
        "a": {"channel": "sms", "address": "+13125550101"},
        "b": {"channel": "sms", "address": "+13125550102"},
        "e": {
            "channel": "email",
            "address": "ana@acme.io",
            "limits": {"per_day": 1, "timezone": "America/Chicago"},
        },
    }.items():
        status, got = await api.call("POST", "/senders", body)
        assert status == 201, got
        made[name] = got["sender"]  # type: ignore[index]
    caps = {"frequency_caps": {"sms": {"limit": 1, "window_hours": 24}}}
    status, got = await api.call("PATCH", "/tenant/settings", caps)
    assert status == 200, got
    steps: list[dict[str, Any]] = [
        {"kind": "sms", "body": "s0"},
        {"kind": "email", "wait_minutes": 10, "subject": "s", "body": "e1"},
        {"kind": "email", "wait_minutes": 10, "subject": "s", "body": "e2"},
        {"kind": "sms", "wait_minutes": 10, "body": "s3"},
        {"kind": "sms", "wait_minutes": 10, "body": "s4"},
    ]
    pools = {"sms": [made["a"]["id"], made["b"]["id"]], "email": [made["e"]["id"]]}
    body = {"name": "S", "status": "active", "steps": steps, "senders": pools}
    status, seq = await api.call("POST", "/sequences", body)
    assert status == 201, seq
    sid = seq["sequence"]["id"]  # type: ignore[index]
    _, contact = await api.call(
        "POST", "/contacts", {"phone": "+12125550100", "email": "c@example.com"}
    )
    cid = contact["contact"]["id"]  # type: ignore[index]
    status, preview = await api.call(
        "POST", f"/sequences/{sid}/preview", {"contact_id": cid, "start_at": to_rfc3339(NOW)}
    )
    assert status == 200, preview
    planned = preview["steps"]  # type: ignore[index]
    # What the preview says, in the contact's time (New York): quiet hours until 08:00; the
    # second email waits for its sender's next day (midnight in Chicago); the second text
    # of Tuesday waits a day for the cap.
    by_id = {s["id"]: n for n, s in made.items()}
    assert [
        (local(p["send_at"], NY), by_id.get(p["sender_id"]), p["moved_by"]) for p in planned
    ] == [
        ("2026-04-06 08:00", "a", ["quiet_hours"]),
        ("2026-04-06 08:10", "e", []),
        ("2026-04-07 01:00", "e", ["sender_limit"]),
        ("2026-04-07 08:00", "a", ["quiet_hours"]),
        ("2026-04-08 08:00", "a", ["frequency_cap"]),
    ]
    # The preview took nothing and left none of its scratch copies behind.
    assert [k async for k in store.client.scan_iter(match="*preview*")] == []
    status, body = await api.call("POST", f"/sequences/{sid}/enrollments", {"contact_id": cid})
    assert status == 201, body
    eid = body["enrollment"]["id"]  # type: ignore[index]
    clock = Clock(NOW)
    d, sender = dispatcher(store, clock)
    went: list[tuple[int, str | None]] = []
    for _ in range(20):
        h = await raw(store, eid)
        if h["st"] != "active":
            break
        clock.at = int(h["n"])
        before = len(sender.messages)
        await d.run_once(clock.at)
        if len(sender.messages) > before:
            message = sender.messages[-1]
            went.append((clock.at, message.sender.id if message.sender else None))
    assert went == [(from_rfc3339(p["send_at"]), p["sender_id"]) for p in planned]


async def test_a_step_in_a_closed_window_is_deferred_at_its_peek(quiet_api: Api) -> None:
    """Deferred in the round trip after the peek that found it: never leased, its sender's
    budget and its contact's cap untouched."""
    api, store = quiet_api, quiet_api.store
    status, got = await api.call(
        "POST", "/senders", {"channel": "sms", "address": "+13125550101", "limits": {"per_day": 5}}
    )
    assert status == 201, got
    sender_id = got["sender"]["id"]  # type: ignore[index]
    caps = {"frequency_caps": {"sms": {"limit": 5, "window_hours": 24}}}
    assert (await api.call("PATCH", "/tenant/settings", caps))[0] == 200
    sid, cid = await _setup(api)
    status, _ = await api.call("PATCH", f"/sequences/{sid}", {"senders": {"sms": [sender_id]}})
    assert status == 200
    _, body = await api.call("POST", f"/sequences/{sid}/enrollments", {"contact_id": cid})
    eid = body["enrollment"]["id"]  # type: ignore[index]
    due = int((await raw(store, eid))["n"])
    _, seq = await api.call("GET", f"/sequences/{sid}")
    schedule_id = seq["sequence"]["schedule_id"]  # type: ignore[index]
    windows = {**WEEKDAYS, "mon": [["14:00", "17:00"]]}
    assert (await api.call("PATCH", f"/schedules/{schedule_id}", {"windows": windows}))[0] == 200
    d, sender = dispatcher(store, Clock(due))
    await d.run_once(due)
    assert sender.messages == [] and (await raw(store, eid))["dr"] == "0:window"
    shard = ids.shard_of(eid, store.shards)
    assert await store.client.zcard(store.keys.leases(shard)) == 0
    assert await store.client.hgetall(store.keys.sender_budgets("acme")) == {}
    assert await store.client.exists(store.keys.frequency(shard, cid, "sms")) == 0


async def test_a_step_the_cap_skips_is_shown_skipped_and_the_dispatcher_skips_it(
    quiet_api: Api,
) -> None:
    api, store = quiet_api, quiet_api.store
    caps = {"frequency_caps": {"sms": {"limit": 1, "window_hours": 24}, "action": "skip"}}
    assert (await api.call("PATCH", "/tenant/settings", caps))[0] == 200
    steps: list[dict[str, Any]] = [
        {"kind": "sms", "body": "s0"},
        {"kind": "sms", "wait_minutes": 10, "body": "s1"},
        {"kind": "email", "wait_minutes": 10, "subject": "s", "body": "e2"},
    ]
    status, seq = await api.call(
        "POST", "/sequences", {"name": "S", "status": "active", "steps": steps}
    )
    assert status == 201, seq
    sid = seq["sequence"]["id"]  # type: ignore[index]
    _, contact = await api.call(
        "POST", "/contacts", {"phone": "+12125550100", "email": "c@example.com"}
    )
    cid = contact["contact"]["id"]  # type: ignore[index]
    status, preview = await api.call(
        "POST", f"/sequences/{sid}/preview", {"contact_id": cid, "start_at": to_rfc3339(NOW)}
    )
    assert status == 200, preview
    planned = preview["steps"]  # type: ignore[index]
    assert [(local(p["send_at"], NY), p["moved_by"], p["skipped"]) for p in planned] == [
        ("2026-04-06 08:00", ["quiet_hours"], False),
        ("2026-04-06 08:10", ["frequency_cap"], True),
        ("2026-04-06 08:20", [], False),
    ]
    _, body = await api.call("POST", f"/sequences/{sid}/enrollments", {"contact_id": cid})
    eid = body["enrollment"]["id"]  # type: ignore[index]
    clock = Clock(NOW)
    d, sender = dispatcher(store, clock)
    for p in planned:
        clock.at = int((await raw(store, eid))["n"])
        assert clock.at == from_rfc3339(p["send_at"])
        await d.run_once(clock.at)
    assert [m.body for m in sender.messages] == ["s0", "e2"]
    (skipped,) = [e for e in await events(store) if e["type"] == "sequence.step.skipped"]
    assert (skipped["step"], skipped["reason"]) == (1, "frequency_cap")
    assert (await raw(store, eid))["st"] == "completed"
