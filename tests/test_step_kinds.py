"""The action step kinds end to end through the API, against a real valkey-server: task
(the tasks API, blocking holds, timeouts in the queue, across a restart), webhook (a local
receiver verifying the signature with `standardwebhooks`) and enroll."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from standardwebhooks.webhooks import Webhook

from seqd.api.app import create_app
from seqd.config import Config, DispatchConfig, WebhooksConfig
from seqd.engine.actions import ActionSenders
from seqd.engine.dispatcher import Dispatcher
from seqd.events import signing
from seqd.store.db import Store
from seqd.times import now_ms
from tests.conftest import QUIET_OFF, Api, free_port
from tests.dispatchutil import Clock, OneSender, Recorder, events, raw

SECRET = signing.new_secret()
MINUTE = 60_000


def config(**webhooks: Any) -> Config:
    hooks = WebhooksConfig(allow_private_targets=True, step_secret=SECRET, **webhooks)
    return Config(compliance=QUIET_OFF, webhooks=hooks)


@pytest.fixture
async def app_api(store: Store) -> AsyncIterator[Api]:
    _, key = await store.tenants.create_key("acme")
    async with TestClient(TestServer(create_app(config(), store))) as client:
        yield Api(client, key, store)


class World:
    """The API, a dispatcher on an injected clock with the action senders, a recorder for
    the messages."""

    def __init__(self, api: Api, cfg: Config | None = None) -> None:
        self.api = api
        self.store = api.store
        self.clock = Clock()
        self.recorder = Recorder()
        self.cfg = cfg or config()
        self.senders: list[ActionSenders] = []
        self.dispatcher = self.new_dispatcher()

    def new_dispatcher(self) -> Dispatcher:
        """A dispatcher as a new process would have: nothing of the old one's memory."""
        senders = ActionSenders(OneSender(self.recorder), self.store, self.cfg)
        self.senders.append(senders)
        return Dispatcher(self.store, DispatchConfig(), senders, clock=self.clock)

    async def close(self) -> None:
        for senders in self.senders:
            await senders.webhook.close()

    async def run(self) -> None:
        # (The clock never runs behind the wall clock the API enrolls by.)
        self.clock.at = max(self.clock.at, now_ms())
        await self.dispatcher.run_once(self.clock())

    async def sequence(self, *steps: dict[str, Any]) -> str:
        status, body = await self.api.call(
            "POST", "/sequences", {"name": "s", "status": "active", "steps": list(steps)}
        )
        assert status == 201, body
        return body["sequence"]["id"]  # type: ignore[index,no-any-return]

    async def enroll(self, sid: str, metadata: dict[str, Any] | None = None, **contact: Any) -> str:
        person = {"first_name": "Ada", "phone": "+14155550100", **contact}
        status, body = await self.api.call(
            "POST",
            f"/sequences/{sid}/enrollments",
            {"contact": person, "metadata": metadata or {}},
        )
        assert status == 201, body
        return body["enrollment"]["id"]  # type: ignore[index,no-any-return]

    async def enrollment(self, eid: str) -> dict[str, Any]:
        status, body = await self.api.call("GET", f"/enrollments/{eid}")
        assert status == 200, body
        return body["enrollment"]  # type: ignore[index,no-any-return]

    async def tasks(self, query: str = "") -> dict[str, Any]:
        status, body = await self.api.call("GET", "/tasks" + query)
        assert status == 200, body
        return body  # type: ignore[return-value]


@pytest.fixture
async def world(app_api: Api) -> AsyncIterator[World]:
    world = World(app_api)
    yield world
    await world.close()


TASK = {
    "kind": "task",
    "title": "Call {{first_name}}",
    "assignee": "{{metadata.owner|team}}",
    "due_in_minutes": 120,
    "blocking": True,
}
SMS = {"kind": "sms", "body": "Hi {{first_name}}"}


async def test_blocking_task_holds_the_enrollment_until_completed(world: World) -> None:
    sid = await world.sequence(TASK, SMS)
    eid = await world.enroll(sid, {"owner": "grace"})
    await world.run()
    e = await world.enrollment(eid)
    assert (e["status"], e["paused_reason"], e["current_step"]) == ("paused", "awaiting_task", 0)
    page = await world.tasks("?assignee=grace&status=open")
    (task,) = page["data"]
    assert page["total"] == 1
    assert task["title"] == "Call Ada" and task["blocking"] is True
    assert (task["enrollment_id"], task["sequence_id"], task["step"]) == (eid, sid, 0)
    assert e["next_run_at"] == task["due_at"]
    assert (await raw(world.store, eid))["p0"] == task["id"]
    # Nothing is sent while the task is open, however often the dispatcher looks.
    await world.run()
    assert world.recorder.messages == []

    status, body = await world.api.call(
        "POST", f"/tasks/{task['id']}/complete", {"outcome": "left a voicemail"}
    )
    assert status == 200, body
    assert body["task"]["status"] == "completed"
    assert body["task"]["outcome"] == "left a voicemail"
    assert (await world.enrollment(eid))["status"] == "active"
    await world.run()  # the task step again: its task completed, it is passed
    await world.run()
    (message,) = world.recorder.messages
    assert (message.step, message.body) == (1, "Hi Ada")
    await world.run()
    assert (await world.enrollment(eid))["status"] == "completed"
    kinds = [(ev["type"], ev.get("kind")) for ev in await events(world.store)]
    assert ("task.created", None) in kinds and ("task.completed", None) in kinds
    sent = [ev for ev in await events(world.store) if ev["type"] == "sequence.step.sent"]
    assert [(ev["step"], ev["kind"], ev["provider_id"]) for ev in sent] == [
        (0, "task", task["id"]),
        (1, "sms", f"pid-{eid}.1"),
    ]
    # Completing again changes nothing.
    status, again = await world.api.call("POST", f"/tasks/{task['id']}/complete")
    assert status == 200 and again["task"]["completed_at"] == body["task"]["completed_at"]


async def test_an_unassigned_template_falls_back_and_a_non_blocking_task_goes_on(
    world: World,
) -> None:
    sid = await world.sequence({**TASK, "blocking": False}, SMS)
    eid = await world.enroll(sid)
    await world.run()
    (task,) = (await world.tasks("?assignee=team"))["data"]
    assert task["status"] == "open" and task["blocking"] is False
    await world.run()
    assert [m.step for m in world.recorder.messages] == [1]
    assert (await world.enrollment(eid))["status"] == "completed"


@pytest.mark.parametrize(
    ("on_timeout", "status"), [("continue", "completed"), ("cancel", "cancelled")]
)
async def test_a_blocking_task_times_out_from_the_queue_after_a_restart(
    world: World, on_timeout: str, status: str
) -> None:
    sid = await world.sequence({**TASK, "on_timeout": on_timeout}, SMS)
    eid = await world.enroll(sid)
    await world.run()
    assert (await world.enrollment(eid))["paused_reason"] == "awaiting_task"
    # A new process: the hold's end is the enrollment's queue member, nothing in memory.
    world.dispatcher = world.new_dispatcher()
    world.clock.advance(119 * MINUTE)
    await world.run()
    assert (await world.enrollment(eid))["status"] == "paused"
    world.clock.advance(MINUTE)
    await world.run()
    (task,) = (await world.tasks())["data"]
    assert task["status"] == "timed_out" and task["completed_at"] is not None
    await world.run()
    e = await world.enrollment(eid)
    assert e["status"] == status
    if status == "cancelled":
        assert e["cancel_reason"] == "task_timed_out"
        assert world.recorder.messages == []
    else:
        assert [m.step for m in world.recorder.messages] == [1]
    types = [ev["type"] for ev in await events(world.store)]
    assert "task.timed_out" in types
    # A timed-out task cannot be completed.
    code, body = await world.api.call("POST", f"/tasks/{task['id']}/complete")
    assert code == 409, body


async def test_a_completion_after_a_restart_of_the_api_and_dispatcher(
    world: World, store: Store
) -> None:
    sid = await world.sequence(TASK, SMS)
    eid = await world.enroll(sid)
    await world.run()
    (task,) = (await world.tasks())["data"]
    # Another API process and another dispatcher over the same store.
    async with TestClient(TestServer(create_app(config(), store))) as client:
        other = World(Api(client, world.api.key, store))
        other.clock = world.clock
        other.dispatcher = other.new_dispatcher()
        status, _ = await other.api.call("POST", f"/tasks/{task['id']}/complete")
        assert status == 200
        await other.run()
        await other.run()
        await other.close()
        assert [m.step for m in other.recorder.messages] == [1]
        assert (await other.enrollment(eid))["current_step"] >= 1


async def test_held_enrollments_are_listed_as_paused_not_active(world: World) -> None:
    sid = await world.sequence(TASK, SMS)
    held = await world.enroll(sid)
    await world.run()
    waiting = await world.enroll(sid, phone="+14155550101")
    listing = {}
    for status in ("active", "paused"):
        code, body = await world.api.call("GET", f"/sequences/{sid}/enrollments?status={status}")
        assert code == 200, body
        listing[status] = ([e["id"] for e in body["data"]], body["total"])
    assert listing == {"active": ([waiting], 1), "paused": ([held], 1)}, (held, waiting)
    code, body = await world.api.call("GET", f"/sequences/{sid}/enrollments")
    assert sorted(e["id"] for e in body["data"]) == sorted([held, waiting]) and body["total"] == 2


async def test_tasks_list_filters_pages_and_patches(world: World) -> None:
    sid = await world.sequence({**TASK, "blocking": False, "due_in_minutes": 30})
    owners = ["grace", "alan", "grace", "grace", "alan"]
    for n, owner in enumerate(owners):
        await world.enroll(sid, {"owner": owner}, phone=f"+1415555020{n}")
    await world.run()
    seen: list[str] = []
    token = ""
    while True:
        page = await world.tasks(f"?assignee=grace&limit=2{token}")
        assert page["total"] == 3
        seen += [t["id"] for t in page["data"]]
        if page["next_page_token"] is None:
            break
        token = f"&page_token={page['next_page_token']}"
    assert len(seen) == len(set(seen)) == 3 and seen == sorted(seen)
    assert (await world.tasks("?status=completed"))["total"] == 0
    first = seen[0]
    code, body = await world.api.call("PATCH", f"/tasks/{first}", {"assignee": "alan"})
    assert code == 200 and body["task"]["assignee"] == "alan"
    assert (await world.tasks("?assignee=grace"))["total"] == 2
    assert (await world.tasks("?assignee=alan&status=open"))["total"] == 3
    code, body = await world.api.call("GET", f"/tasks/{first}", key="nope")
    assert code == 401
    code, body = await world.api.call("GET", "/tasks/tsk_nothing")
    assert code == 404, body
    code, body = await world.api.call("GET", "/tasks?status=lost")
    assert code == 422, body


async def test_patching_the_due_time_moves_the_hold(world: World) -> None:
    sid = await world.sequence(TASK, SMS)
    eid = await world.enroll(sid)
    await world.run()
    (task,) = (await world.tasks())["data"]
    sooner = "2020-01-01T00:00:00.000Z"
    code, body = await world.api.call("PATCH", f"/tasks/{task['id']}", {"due_at": sooner})
    assert code == 200 and body["task"]["due_at"] == sooner
    assert (await world.enrollment(eid))["next_run_at"] == sooner
    await world.run()
    assert (await world.api.call("GET", f"/tasks/{task['id']}"))[1]["task"]["status"] == "timed_out"


# -- webhook steps -------------------------------------------------------------------------
class Receiver:
    """A local HTTP server: records each request, answers `answers` in turn (status, body),
    then 200 with `{}`."""

    def __init__(self) -> None:
        self.port = free_port()
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.answers: list[tuple[int, Any]] = []
        self._runner: web.AppRunner | None = None

    def url(self, path: str = "/crm") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests.append((request.method, dict(request.headers), await request.read()))
        status, body = self.answers.pop(0) if self.answers else (200, {})
        return web.json_response(body, status=status)

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


async def _until(check: Callable[[], Any]) -> None:
    for _ in range(200):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not in time")


async def test_webhook_step_is_signed_idempotent_and_merges_attributes(world: World) -> None:
    async with Receiver() as receiver:
        receiver.answers = [(200, {"id": "crm-1", "attributes": {"plan": "pro", "gone": None}})]
        hook = {
            "kind": "webhook",
            "url": receiver.url(),
            "headers": {"X-Owner": "{{metadata.owner}}"},
            "body": '{"name": "{{first_name}}"}',
        }
        sid = await world.sequence(hook, {"kind": "sms", "body": "Plan {{attributes.plan}}"})
        eid = await world.enroll(sid, {"owner": "grace"}, attributes={"gone": "x"})
        await world.run()
        await _until(lambda: receiver.requests)
        method, headers, body = receiver.requests[0]
        assert method == "POST" and json.loads(body) == {"name": "Ada"}
        Webhook(SECRET).verify(body, headers)
        assert headers["Idempotency-Key"] == headers["webhook-id"] == f"{eid}.0"
        assert headers["X-Owner"] == "grace"
        assert (await raw(world.store, eid))["p0"] == "crm-1"
        await world.run()
        (message,) = world.recorder.messages
        assert message.body == "Plan pro"
        contact = (await world.enrollment(eid))["contact_id"]
        code, body = await world.api.call("GET", f"/contacts/{contact}")
        assert code == 200 and body["contact"]["attributes"] == {"plan": "pro"}
        sent = [ev for ev in await events(world.store) if ev["type"] == "sequence.step.sent"]
        assert (sent[0]["kind"], sent[0]["provider_id"]) == ("webhook", "crm-1")


async def test_webhook_step_outcomes_follow_the_http_channel(world: World) -> None:
    async with Receiver() as receiver:
        receiver.answers = [(503, {}), (400, {"error": "bad"})]
        sid = await world.sequence({"kind": "webhook", "url": receiver.url()}, SMS)
        eid = await world.enroll(sid)
        await world.run()
        e = await raw(world.store, eid)
        assert (e["st"], e.get("a")) == ("active", "1")
        world.clock.advance(10 * MINUTE)
        await world.run()
        assert len(receiver.requests) == 2
        # The retry carries the same key: the receiver can tell it is the same call.
        assert receiver.requests[0][1]["webhook-id"] == receiver.requests[1][1]["webhook-id"]
        e = await raw(world.store, eid)
        assert (e["st"], e["cr"]) == ("cancelled", "failed")
        failed = [ev for ev in await events(world.store) if ev["type"] == "sequence.step.failed"]
        assert "HTTP 400" in failed[-1]["error"]


async def test_webhook_step_urls_and_secret_are_checked_when_saved(store: Store) -> None:
    _, key = await store.tenants.create_key("acme")
    strict = Config(compliance=QUIET_OFF, webhooks=WebhooksConfig(step_secret=SECRET))
    async with TestClient(TestServer(create_app(strict, store))) as client:
        api = Api(client, key, store)
        steps = [{"kind": "webhook", "url": "http://127.0.0.1:9/x"}]
        code, body = await api.call("POST", "/sequences", {"name": "s", "steps": steps})
        assert code == 422, body
        assert [e["path"] for e in body["errors"]] == ["steps[0].url"]
    unsigned = Config(compliance=QUIET_OFF, webhooks=WebhooksConfig(allow_private_targets=True))
    async with TestClient(TestServer(create_app(unsigned, store))) as client:
        api = Api(client, key, store)
        code, body = await api.call("POST", "/sequences", {"name": "s", "steps": steps})
        assert code == 422, body
        assert "step_secret" in body["errors"][0]["message"]


# -- enroll steps ----------------------------------------------------------------------------
async def test_enroll_step_hands_the_contact_over_once_then_completes(world: World) -> None:
    nurture = await world.sequence({"kind": "sms", "body": "Nurture {{metadata.owner}}"})
    sid = await world.sequence(
        SMS, {"kind": "enroll", "sequence_id": nurture, "then": "complete"}, SMS
    )
    eid = await world.enroll(sid, {"owner": "grace"})
    await world.run()
    await world.run()
    e = await world.enrollment(eid)
    assert (e["status"], e["current_step"]) == ("completed", 2)
    new = (await raw(world.store, eid))["p1"]
    handed = await world.enrollment(new)
    assert (handed["sequence_id"], handed["contact_id"]) == (nurture, e["contact_id"])
    assert handed["metadata"] == {"owner": "grace"}
    # The same step sent again (a retry, another process) enrolls nobody new.
    result = await world.dispatcher.senders.get("acme", "enroll").send(
        msgspec.structs.replace(world.recorder.messages[0], kind="enroll", to=nurture, body="")
    )
    assert (result.outcome, result.provider_id) == ("sent", new)
    code, body = await world.api.call("GET", f"/sequences/{nurture}/enrollments")
    assert code == 200 and [e["id"] for e in body["data"]] == [new]
    await world.run()
    assert [m.body for m in world.recorder.messages] == ["Hi Ada", "Nurture grace"]


async def test_enroll_step_into_a_missing_sequence_is_refused_when_saved(world: World) -> None:
    code, body = await world.api.call(
        "POST",
        "/sequences",
        {"name": "s", "steps": [{"kind": "enroll", "sequence_id": "seq_nothing"}]},
    )
    assert code == 422, body
    assert body["errors"][0]["path"] == "steps[0].sequence_id"


async def test_each_kind_refuses_another_kinds_fields(world: World) -> None:
    steps = [{"kind": "sms", "body": "x", "title": "t"}, {"kind": "task"}]
    code, body = await world.api.call("POST", "/sequences", {"name": "s", "steps": steps})
    assert code == 422, body
    assert {(e["path"], e["message"]) for e in body["errors"]} == {
        ("steps[0].title", "only task steps take a title"),
        ("steps[1].title", "required for task steps"),
    }


async def test_webhook_endpoints_can_subscribe_to_task_events(world: World) -> None:
    code, body = await world.api.call(
        "POST",
        "/webhook-endpoints",
        {"url": "http://127.0.0.1:9/hooks", "events": ["task.created", "task.completed"]},
    )
    assert code == 201, body


async def test_task_events_are_delivered_as_the_task_is_shown(world: World) -> None:
    from tests.webhookutil import endpoint, pipeline, receiving

    async with receiving() as receiver, pipeline(world.store) as deliveries:
        _, secret = await endpoint(world.store, receiver.url(), ["task.created", "task.completed"])
        sid = await world.sequence(TASK, SMS)
        await world.enroll(sid, {"owner": "grace"})
        await world.run()
        (task,) = (await world.tasks())["data"]
        await world.api.call("POST", f"/tasks/{task['id']}/complete", {"outcome": "done"})
        await deliveries.step()
        got = {r.json()["type"]: r for r in receiver.requests}
        assert sorted(got) == ["task.completed", "task.created"]
        for received in got.values():
            Webhook(secret).verify(received.body, received.headers)
        created = got["task.created"].json()["data"]
        assert created == {**task, "status": "open", "completed_at": None, "outcome": None}
        done = got["task.completed"].json()["data"]
        assert (done["status"], done["outcome"], done["id"]) == ("completed", "done", task["id"])


async def test_a_hold_resumed_by_hand_waits_for_its_task_then_goes_on(world: World) -> None:
    sid = await world.sequence(TASK, SMS)
    eid = await world.enroll(sid)
    await world.run()
    code, body = await world.api.call("POST", f"/enrollments/{eid}/resume")
    assert code == 200 and body["enrollment"]["status"] == "active"
    # Its task step comes due again at the task's due time; nothing goes out before.
    (task,) = (await world.tasks())["data"]
    assert body["enrollment"]["next_run_at"] == task["due_at"]
    await world.run()
    assert world.recorder.messages == []
    await world.api.call("POST", f"/tasks/{task['id']}/complete")
    await world.run()
    await world.run()
    assert [m.step for m in world.recorder.messages] == [1]


async def test_a_webhook_step_is_never_sent_unsigned(app_api: Api) -> None:
    """The secret gone from the config after the step was saved: the step fails, no call."""
    unsigned = Config(compliance=QUIET_OFF, webhooks=WebhooksConfig(allow_private_targets=True))
    world = World(app_api, unsigned)
    try:
        async with Receiver() as receiver:
            sid = await world.sequence({"kind": "webhook", "url": receiver.url()}, SMS)
            eid = await world.enroll(sid)
            await world.run()
            e = await raw(world.store, eid)
            assert (e["st"], e["cr"]) == ("cancelled", "failed")
            assert receiver.requests == []
    finally:
        await world.close()


async def test_a_condition_skips_an_action_step(world: World) -> None:
    only_vip = {**TASK, "only_if": {"field": "metadata.tier", "eq": "vip"}}
    sid = await world.sequence(only_vip, SMS)
    skipped = await world.enroll(sid, {"tier": "basic"})
    held = await world.enroll(sid, {"tier": "vip"}, phone="+14155550109")
    await world.run()
    await world.run()
    assert [t["enrollment_id"] for t in (await world.tasks())["data"]] == [held]
    assert (await world.enrollment(held))["paused_reason"] == "awaiting_task"
    assert (await world.enrollment(skipped))["status"] == "completed"
    assert [m.enrollment_id for m in world.recorder.messages] == [skipped]
