"""Frequency caps: at most N messages of a channel to one contact in a rolling window,
across a tenant's sequences; over the cap a step is deferred (no attempt counted) or
skipped, as the tenant's policy says. The policy comes from the config or from
PATCH /v1/tenant/settings. Real valkey, injected clock."""

from __future__ import annotations

from typing import Any

import pytest

from seqd.config import Config, FrequencyCap, FrequencyCapsConfig, TenantConfig
from seqd.engine.budgets import Budgets
from seqd.engine.dispatcher import Dispatcher
from seqd.senders.models import StoredSettings
from seqd.store import calls
from seqd.store.db import Store
from seqd.store.keys import SHARD_TEMPLATES
from tests.dispatchutil import (
    TENANT,
    Clock,
    OneSender,
    Recorder,
    contacts,
    due_score,
    email,
    enroll,
    events,
    raw,
    sequence,
    sms,
)
from tests.test_senders_budget import ms
from tests.webhookutil import api_client

HOUR = 3_600_000


def _errors(body: Any) -> dict[str, str]:
    return {e["path"]: e["message"] for e in body["errors"]}


async def test_settings_default_to_the_config_and_patch_goes_over_it(store: Store) -> None:
    own = FrequencyCapsConfig(email=FrequencyCap(limit=5, window_hours=168))
    config = Config(tenants={"acme": TenantConfig(frequency_caps=own)})
    async with api_client(store, config) as api:
        status, got = await api.call("GET", "/tenant/settings")
        assert status == 200 and got["frequency_caps_source"] == "config"  # type: ignore[index]
        caps = got["frequency_caps"]  # type: ignore[index]
        assert caps["email"] == {"limit": 5, "window_hours": 168.0}
        assert caps["sms"]["limit"] == 0 and caps["action"] == "defer"
        body = {"frequency_caps": {"sms": {"limit": 3, "window_hours": 24}, "action": "skip"}}
        status, got = await api.call("PATCH", "/tenant/settings", body)
        assert status == 200 and got["frequency_caps_source"] == "api"  # type: ignore[index]
        assert got["frequency_caps"]["sms"] == {"limit": 3, "window_hours": 24.0}  # type: ignore[index]
        # Replaced whole: the config's email cap is not kept under the API's.
        assert got["frequency_caps"]["email"]["limit"] == 0  # type: ignore[index]
        _, other = await store.tenants.create_key("globex")
        _, theirs = await api.call("GET", "/tenant/settings", key=other)
        assert theirs["frequency_caps"]["sms"]["limit"] == 0  # type: ignore[index]
        status, got = await api.call("PATCH", "/tenant/settings", {"frequency_caps": None})
        assert got["frequency_caps_source"] == "config"  # type: ignore[index]
        assert got["frequency_caps"]["email"]["limit"] == 5  # type: ignore[index]


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"frequency_caps": {"sms": {"limit": -1}}}, "frequency_caps.sms.limit"),
        ({"frequency_caps": {"sms": {"limit": 2, "window_hours": 0}}},
         "frequency_caps.sms.window_hours"),
        ({"frequency_caps": {"action": "drop"}}, "frequency_caps.action"),
        ({"frequency_caps": {"fax": {"limit": 1}}}, "frequency_caps.fax"),
        ({"caps": {}}, "caps"),
    ],
)  # fmt: skip
async def test_bad_settings_are_a_422_naming_the_field(
    store: Store, body: dict[str, Any], path: str
) -> None:
    async with api_client(store) as api:
        status, answer = await api.call("PATCH", "/tenant/settings", body)
        assert status == 422 and path in _errors(answer), answer


async def _cap(store: Store, action: str = "defer", **caps: FrequencyCap) -> None:
    await store.settings.put(
        TENANT,
        StoredSettings(frequency_caps=FrequencyCapsConfig(action=action, **caps)),  # type: ignore[arg-type]
    )


def _dispatcher(store: Store, recorder: Recorder, clock: Clock) -> Dispatcher:
    from seqd.config import DispatchConfig

    return Dispatcher(
        store, DispatchConfig(), OneSender(recorder), clock=clock, budgets=Budgets(store)
    )


async def test_over_the_cap_across_sequences_is_deferred_until_the_window_allows(
    store: Store,
) -> None:
    clock = Clock(ms("2027-06-01T12:00:00"))
    await _cap(store, sms=FrequencyCap(limit=2, window_hours=24))
    (cid,) = await contacts(store, 1)
    first = await sequence(store, sms("a1"), sms("a2"))
    second = await sequence(store, sms("b1"), email(body="b2"))
    (ea,) = await enroll(store, first, [cid])
    (eb,) = await enroll(store, second, [cid])
    recorder = Recorder()
    d = _dispatcher(store, recorder, clock)
    await d.run_once(clock.at)
    first_sends = clock.at
    # Two texts went (one of each sequence); the next ones wait for the window.
    assert sorted(m.body for m in recorder.messages) == ["a1", "b1"]
    clock.advance(1000)
    await d.run_once(clock.at)
    bodies = sorted(m.body for m in recorder.messages)
    # The email is not capped; a2 is deferred a day after the first two texts.
    assert bodies == ["a1", "b1", "b2"]
    assert await due_score(store, ea.id) == first_sends + 24 * HOUR
    assert "a" not in await raw(store, ea.id)
    clock.at = first_sends + 24 * HOUR - 1
    await d.run_once(clock.at)
    assert len(recorder.messages) == 3
    clock.at = first_sends + 24 * HOUR
    await d.run_once(clock.at)
    assert [m.body for m in recorder.messages][-1] == "a2"
    assert (await raw(store, ea.id))["st"] == "completed"
    assert (await raw(store, eb.id))["st"] == "completed"


async def test_over_the_cap_is_skipped_when_the_policy_says_so(store: Store) -> None:
    clock = Clock(ms("2027-06-01T12:00:00"))
    await _cap(store, "skip", sms=FrequencyCap(limit=1, window_hours=1))
    seq = await sequence(store, sms("one"), sms("two"), sms("three", wait=60))
    (e,) = await enroll(store, seq, await contacts(store, 1))
    recorder = Recorder()
    d = _dispatcher(store, recorder, clock)
    await d.run_once(clock.at)
    await d.run_once(clock.at)
    assert [m.body for m in recorder.messages] == ["one"]
    h = await raw(store, e.id)
    assert h["i"] == "2" and h["st"] == "active"
    skipped = [ev for ev in await events(store) if ev["type"] == "sequence.step.skipped"]
    assert [(ev["step"], ev["reason"]) for ev in skipped] == [(1, "frequency_cap")]
    # An hour later the window has room again.
    clock.advance(60 * 60_000)
    await d.run_once(clock.at)
    assert [m.body for m in recorder.messages] == ["one", "three"]


async def test_no_cap_no_counting(store: Store) -> None:
    clock = Clock(ms("2027-06-01T12:00:00"))
    seq = await sequence(store, sms("one"), sms("two"), sms("three"))
    (e,) = await enroll(store, seq, await contacts(store, 1))
    recorder = Recorder()
    d = _dispatcher(store, recorder, clock)
    for _ in range(3):
        await d.run_once(clock.at)
    assert len(recorder.messages) == 3
    tag = "{" + store.keys.prefix + ":*}"
    pattern = SHARD_TEMPLATES["frequency"].format(tag=tag, contact_id="*", kind="*")
    assert await store.client.keys(pattern) == []
    assert (await raw(store, e.id))["st"] == "completed"


async def test_take_frequency_counts_a_step_once(any_store: Store) -> None:
    store = any_store
    now = ms("2027-06-01T12:00:00")

    async def take(at: int, *members: str) -> list[int]:
        flat: list[str | int] = []
        for member in members:
            flat += ("con_1", "sms", member, 2, HOUR)
        return [
            int(v) for v in await store.runner.run(calls.take_frequency(store.keys, 0, at, flat))
        ]

    assert await take(now, "e1:0", "e1:0", "e2:0") == [0, 0, 0]
    # Full: the next waits for the oldest to leave the window; a step counted passes.
    assert await take(now + 10, "e3:0", "e1:0") == [now + HOUR, 0]
    assert await take(now + HOUR, "e3:0") == [0]
    key = SHARD_TEMPLATES["frequency"].format(
        tag=store.keys.shard_tag(0), contact_id="con_1", kind="sms"
    )
    assert 0 < await store.client.pttl(key) <= HOUR


async def test_a_transactional_step_is_not_counted(store: Store) -> None:
    import dataclasses

    from seqd.engine import plans
    from seqd.store.claims import Claimed, ClaimedEnrollment

    await _cap(store, sms=FrequencyCap(limit=1, window_hours=24))
    seq = await sequence(store, sms("code"), sms("promo"))
    plan = plans.build(seq, 1)
    exempt = dataclasses.replace(plan.steps[0], transactional=True)
    plan = dataclasses.replace(plan, steps=(exempt, *plan.steps[1:]))

    def item(eid: str, index: int) -> Claimed:
        e = ClaimedEnrollment(TENANT, seq.id, "con_1", "active", str(index), "0", "0")
        return Claimed(eid, e, {})

    budgets = Budgets(store)
    items = [item("enr_a", 0), item("enr_b", 1)]
    asked = await budgets.ask(items, {seq.id: plan}, {"enr_a": 0, "enr_b": 0}, 0)
    # Only the promotional step counts against the contact's cap.
    assert asked is not None and asked.counted == [["enr_b"]]
