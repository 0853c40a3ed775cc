"""Step conditions (`skip_if` / `only_if`): their rules through the API, their evaluation,
and the channel fallback "text now; if the SMS is undelivered after 10 minutes, send the
email instead" with real Twilio status callbacks arriving late and out of order."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import msgspec
import pytest

from seqd import conditions
from seqd.channels.twilio import TwilioSender
from seqd.conditions import Condition, Facts
from seqd.config import DispatchConfig
from seqd.engine.dispatcher import Dispatcher
from seqd.store.db import Store
from tests.conftest import Api
from tests.dispatchutil import Clock, Recorder, events, raw
from tests.lifecycleutil import Client, client, config, send_due
from tests.test_channels_twilio import FakeTwilio, make_sender, twilio

__all__ = ["twilio"]  # the fixture, used by name

MINUTE = 60_000


def cond(data: dict[str, Any]) -> Condition:
    return msgspec.convert(data, Condition)


def holds(data: dict[str, Any], facts: Facts) -> bool:
    return conditions.compile_condition(cond(data))(facts)


def facts(
    contact: dict[str, str] | None = None,
    metadata: str | None = None,
    outcomes: str = "",
    index: int = 3,
) -> Facts:
    return Facts(contact or {}, metadata, outcomes, index)


# -- evaluation -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("letters", "fact", "expected"),
    [
        ("", "sent", True),
        ("", "undelivered", True),  # no receipt by now: not known delivered
        ("", "delivered", False),
        ("d", "delivered", True),
        ("d", "undelivered", False),
        ("u", "undelivered", True),
        ("f", "undelivered", True),
        ("f", "failed", True),
        ("u", "failed", False),
        ("k", "skipped", True),
        ("k", "sent", False),
        ("k", "undelivered", True),
        ("r", "replied", True),
        ("r", "delivered", True),  # a reply means it got there
        ("d", "replied", False),
        # Passed before a move to a version where this step is another one: it did not run.
        ("x", "sent", False),
        ("x", "skipped", False),
        ("x", "delivered", False),
        ("x", "undelivered", True),
    ],
)
def test_step_facts(letters: str, fact: str, expected: bool) -> None:
    assert holds({"step": 0, "is": fact}, facts(outcomes=letters, index=1)) is expected


def test_a_step_not_reached_is_neither_sent_nor_undelivered() -> None:
    f = facts(index=1)
    assert not holds({"step": 1, "is": "sent"}, f)
    assert not holds({"step": 1, "is": "undelivered"}, f)
    # Letters of later steps than the one asked about are read by place.
    assert holds({"step": 2, "is": "delivered"}, facts(outcomes="--d"))


def test_fields_attributes_metadata_and_combinators() -> None:
    f = facts(
        {"first_name": "Ada", "attributes": '{"plan": "pro", "seats": 3, "trial": false}'},
        '{"owner": {"team": "east"}, "score": 1.0}',
    )
    assert holds({"field": "attributes.plan", "eq": "pro"}, f)
    assert holds({"field": "attributes.seats", "in": [1, 2, 3]}, f)
    assert not holds({"field": "attributes.trial", "eq": 0}, f)  # false is not 0
    assert holds({"field": "attributes.trial", "eq": False}, f)
    assert holds({"field": "metadata.score", "eq": 1}, f)  # 1.0 is 1
    assert holds({"field": "metadata.owner.team", "eq": "east"}, f)
    assert holds({"field": "first_name", "exists": True}, f)
    assert holds({"field": "last_name", "exists": False}, f)
    assert not holds({"field": "metadata.owner.nope", "exists": True}, f)
    assert holds({"field": "attributes.seats", "in": ["3", 3.0]}, f)  # mixed options
    assert not holds({"field": "attributes.trial", "in": [0, "false"]}, f)
    assert not holds({"field": "metadata.owner", "in": ["east"]}, f)  # an object is no str
    assert holds({"field": "last_name", "eq": None}, f)  # null: unset
    assert holds({"field": "first_name", "in": ["Bo", "Ada"]}, f)
    assert not holds({"field": "metadata.owner.team.x", "eq": "east"}, f)
    assert holds(
        {
            "all": [
                {"field": "attributes.plan", "eq": "pro"},
                {"any": [{"field": "email", "exists": True}, {"not": {"step": 0, "is": "sent"}}]},
            ]
        },
        facts({"attributes": '{"plan": "pro"}'}, outcomes="k"),
    )


def test_gate_combines_only_if_and_skip_if() -> None:
    only = cond({"field": "attributes.plan", "eq": "pro"})
    skip = cond({"step": 0, "is": "delivered"})
    gate = conditions.gate(only, skip)
    assert gate is not None and conditions.gate(None, None) is None
    pro = {"attributes": '{"plan": "pro"}'}
    assert gate(facts(pro, outcomes="u"))
    assert not gate(facts(pro, outcomes="d"))
    assert not gate(facts({"attributes": '{"plan": "free"}'}, outcomes="u"))


# -- validation through the API --------------------------------------------------------------
def seq_body(*steps: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": "s", "status": "active", "steps": list(steps), **extra}


SMS = {"kind": "sms", "body": "Hi"}
EMAIL = {"kind": "email", "subject": "Hi", "body": "Hello"}


async def problems(api: Api, body: dict[str, Any]) -> dict[str, str]:
    code, answer = await api.call("POST", "/sequences", body)
    assert code == 422, answer
    assert isinstance(answer, dict)
    return {e["path"]: e["message"] for e in answer["errors"]}


async def test_a_condition_must_name_an_earlier_step(api: Api) -> None:
    bad = {"any": [{"step": 2, "is": "delivered"}, {"step": 0, "is": "sent"}]}
    found = await problems(api, seq_body(SMS, SMS, {**EMAIL, "only_if": bad}))
    assert found == {"steps[2].only_if.any[0].step": "must be an earlier step"}


SENT = {"step": 0, "is": "sent"}
NOT_NOT = "steps[1].skip_if.not.not.field"


@pytest.mark.parametrize(
    ("condition", "path", "words"),
    [
        ({"step": 0}, "steps[1].skip_if.is", "required"),
        ({"is": "sent"}, "steps[1].skip_if.step", "required"),
        ({"field": "plan", "eq": 1}, "steps[1].skip_if.field", "matching regex"),
        ({"field": "attributes.plan"}, "steps[1].skip_if", "exactly one of eq, in, exists"),
        ({"field": "email", "eq": 1, "exists": True}, "steps[1].skip_if", "exactly one"),
        ({"step": 0, "is": "sent", "all": [SENT]}, "steps[1].skip_if", "exactly"),
        ({"not": {"not": {"field": "metadata.", "exists": True}}}, NOT_NOT, "regex"),
        ({"step": 0, "is": "opened"}, "steps[1].skip_if.is", "Invalid enum value"),
        ({"all": []}, "steps[1].skip_if.all", "length"),
        ({"step": 0, "is": "sent", "when": 1}, "steps[1].skip_if.when", "unknown field"),
    ],
)  # fmt: skip
async def test_condition_errors_name_the_path(
    api: Api, condition: dict[str, Any], path: str, words: str
) -> None:
    found = await problems(api, seq_body(SMS, {**EMAIL, "skip_if": condition}))
    assert path in found, found
    assert words in found[path]


async def test_nesting_is_bounded(api: Api) -> None:
    deep: dict[str, Any] = {"step": 0, "is": "sent"}
    for _ in range(conditions.MAX_DEPTH):
        deep = {"not": deep}
    found = await problems(api, seq_body(SMS, {**EMAIL, "only_if": deep}))
    assert any("nested more than" in m for m in found.values()), found


async def test_conditions_are_kept_and_patched(api: Api) -> None:
    only = {"step": 0, "is": "undelivered"}
    code, made = await api.call("POST", "/sequences", seq_body(SMS, {**EMAIL, "only_if": only}))
    assert code == 201, made
    assert isinstance(made, dict)
    sid = made["sequence"]["id"]
    assert made["sequence"]["steps"][1]["only_if"] == only
    assert made["sequence"]["steps"][0]["only_if"] is None
    skip = {"field": "attributes.plan", "in": ["pro", "team"]}
    code, patched = await api.call(
        "PATCH", f"/sequences/{sid}", {"steps": [SMS, {**EMAIL, "skip_if": skip}]}
    )
    assert code == 200, patched
    assert isinstance(patched, dict)
    assert patched["sequence"]["steps"][1]["skip_if"] == skip
    code, bad = await api.call(
        "PATCH", f"/sequences/{sid}", {"steps": [{**SMS, "only_if": {"step": 0, "is": "sent"}}]}
    )
    assert code == 422 and "steps[0].only_if.step" in str(bad)


# -- the channel fallback, end to end --------------------------------------------------------
FALLBACK = seq_body(
    {"kind": "sms", "body": "Hi {{first_name}}, your code is ready"},
    {
        "kind": "email",
        "wait_minutes": 10,
        "subject": "Your code",
        "body": "Hi {{first_name}}, we could not text you",
        "only_if": {"step": 0, "is": "undelivered"},
    },
)


async def status_callback(api: Client, eid: str, step: int, status: str, **extra: str) -> None:
    path = "/inbound/twilio/status?" + urlencode({"e": eid, "s": step})
    params = {"MessageSid": "SM0f00", "MessageStatus": status, "To": "+14155550100", **extra}
    code, _ = await api.twilio(path, params, token="acme-token")
    assert code == 204


async def fallback_enrollment(api: Client, **contact: Any) -> str:
    code, made = await api.call("POST", "/sequences", FALLBACK)
    assert code == 201, made
    person = {"first_name": "Ada", "phone": "+14155550100", "email": "ada@example.com", **contact}
    code, enrolled = await api.call(
        "POST", f"/sequences/{made['sequence']['id']}/enrollments", {"contact": person}
    )
    assert code == 201, enrolled
    return str(enrolled["enrollment"]["id"])


async def run_fallback(store: Store, receipts: list[tuple[str, dict[str, str]]]) -> Recorder:
    """Enroll through the API, send the SMS, post `receipts` (status, extra) as Twilio
    does within the ten minutes, then run the dispatcher when the email step is due."""
    sender = Recorder()
    cfg = config()
    async with client(store, cfg) as api:
        eid = await fallback_enrollment(api)
        clock = Clock()
        await send_due(store, clock, sender)
        assert [m.kind for m in sender.messages] == ["sms"]
        clock.advance(9 * MINUTE)
        await send_due(store, clock, sender)
        assert [m.kind for m in sender.messages] == ["sms"]  # not due yet
        for status, extra in receipts:
            await status_callback(api, eid, 0, status, **extra)
        clock.advance(MINUTE + 1)
        await send_due(store, clock, sender)
        _, got = await api.call("GET", f"/enrollments/{eid}")
        assert got["enrollment"]["status"] == "completed", got
    return sender


@pytest.mark.parametrize(
    "statuses",
    [
        ["sent", "undelivered"],
        ["failed"],
        # Late and out of order: the final status came first, a stale "sent" after it.
        ["undelivered", "sent", "queued"],
        # Twilio's own retries of one final status.
        ["undelivered", "undelivered"],
        [],  # no receipt at all within the ten minutes
    ],
)
async def test_undelivered_sms_falls_back_to_email(store: Store, statuses: list[str]) -> None:
    sender = await run_fallback(store, [(s, {"ErrorCode": "30003"}) for s in statuses])
    assert [m.kind for m in sender.messages] == ["sms", "email"]
    assert sender.messages[1].to == "ada@example.com"
    assert "could not text you" in sender.messages[1].body
    assert not [e for e in await events(store) if e["type"] == "sequence.step.skipped"]


@pytest.mark.parametrize(
    "statuses",
    [
        ["sent", "delivered"],
        # Out of order: delivered, then late stale and contradicting reports.
        ["delivered", "sending", "undelivered"],
        ["queued", "delivered", "failed"],
    ],
)
async def test_delivered_sms_skips_the_email(store: Store, statuses: list[str]) -> None:
    sender = await run_fallback(store, [(s, {}) for s in statuses])
    assert [m.kind for m in sender.messages] == ["sms"]
    skipped = [e for e in await events(store) if e["type"] == "sequence.step.skipped"]
    assert [(e["step"], e["kind"], e["reason"]) for e in skipped] == [(1, "email", "condition")]


async def test_a_receipt_after_the_wait_changes_nothing_sent(store: Store) -> None:
    """The email went (no receipt in time); a late "delivered" is recorded on the SMS step
    and the email stays sent."""
    sender = await run_fallback(store, [])
    assert [m.kind for m in sender.messages] == ["sms", "email"]
    cfg = config()
    eid = sender.messages[0].enrollment_id
    async with client(store, cfg) as api:
        await status_callback(api, eid, 0, "delivered")
    h = await raw(store, eid)
    assert h["d0"] == "3:delivered" and h["o"][0] == "d"


class SmsByTwilio:
    """The dispatcher's senders: SMS through the Twilio channel (to the local server that
    speaks Twilio's wire format), email recorded."""

    def __init__(self, sms: TwilioSender, email: Recorder) -> None:
        self.sms, self.email = sms, email

    def get(self, tenant: str, kind: str) -> TwilioSender | Recorder:
        return self.sms if kind == "sms" else self.email

    async def close(self) -> None:
        await self.sms.close()


@pytest.mark.parametrize(("receipts", "emailed"), [(["delivered"], False), (["undelivered"], True)])
async def test_fallback_through_the_twilio_wire_format(
    store: Store, twilio: FakeTwilio, receipts: list[str], emailed: bool
) -> None:
    """The SMS goes to the Twilio server with its StatusCallback; the receipt comes back to
    that URL, signed; the email step reads it ten minutes later."""
    senders = SmsByTwilio(
        make_sender(twilio.base_url, auth_token="acme-token", status_callback=True), Recorder()
    )
    cfg = config()
    async with client(store, cfg) as api:
        eid = await fallback_enrollment(api)
        clock = Clock()
        dispatch = Dispatcher(store, DispatchConfig(), senders, clock=clock)
        await dispatch.run_once(clock())
        (sent,) = twilio.seen
        callback = urlsplit(sent.form["StatusCallback"])
        assert parse_qs(callback.query) == {"e": [eid], "s": ["0"]}
        for status in receipts:
            params = {"MessageSid": "SM1", "MessageStatus": status, "To": sent.form["To"]}
            code, _ = await api.twilio(
                callback.path.removeprefix("/v1") + "?" + callback.query, params,
                token="acme-token",
            )  # fmt: skip
            assert code == 204
        clock.advance(10 * MINUTE + 1)
        await dispatch.run_once(clock())
        await senders.close()
    assert [m.kind for m in senders.email.messages] == (["email"] if emailed else [])


async def test_conditions_on_attributes_and_metadata_read_what_templates_do_not(
    store: Store,
) -> None:
    """The claim reads the contact fields a condition names even when no template does."""
    cfg = config()
    sender = Recorder()
    body = seq_body(
        {"kind": "sms", "body": "Hi", "skip_if": {"field": "attributes.plan", "eq": "pro"}},
        {"kind": "sms", "body": "Again", "only_if": {"field": "metadata.source", "in": ["ads"]}},
    )
    async with client(store, cfg) as api:
        code, made = await api.call("POST", "/sequences", body)
        assert code == 201, made
        sid = made["sequence"]["id"]
        people = {
            "pro": ({"phone": "+14155550101", "attributes": {"plan": "pro"}}, {"source": "ads"}),
            "free": ({"phone": "+14155550102", "attributes": {"plan": "free"}}, {"source": "ads"}),
            "organic": ({"phone": "+14155550103"}, {"source": "seo"}),
        }
        eids = {}
        for name, (person, metadata) in people.items():
            code, got = await api.call(
                "POST", f"/sequences/{sid}/enrollments", {"contact": person, "metadata": metadata}
            )
            assert code == 201, got
            eids[got["enrollment"]["id"]] = name
        clock = Clock()
        for _ in range(3):
            await send_due(store, clock, sender)
    sent = sorted((eids[m.enrollment_id], m.body) for m in sender.messages)
    assert sent == [("free", "Again"), ("free", "Hi"), ("organic", "Hi"), ("pro", "Again")]
    skipped = [e for e in await events(store) if e["type"] == "sequence.step.skipped"]
    assert sorted((eids[e["id"]], e["step"]) for e in skipped) == [
        ("organic", 1), ("pro", 0),
    ]  # fmt: skip
    assert {e["reason"] for e in skipped} == {"condition"}


async def test_a_reply_is_a_fact_of_the_step_it_answers(store: Store) -> None:
    """A reply pauses the enrollment; once resumed, a step `only_if` the reply goes."""
    cfg = config()
    sender = Recorder()
    body = seq_body(
        {"kind": "sms", "body": "Hi"},
        {"kind": "sms", "body": "Thanks for answering", "only_if": {"step": 0, "is": "replied"}},
        {"kind": "sms", "body": "Still there?", "skip_if": {"step": 0, "is": "replied"}},
    )
    async with client(store, cfg) as api:
        code, made = await api.call("POST", "/sequences", body)
        assert code == 201, made
        code, got = await api.call(
            "POST", f"/sequences/{made['sequence']['id']}/enrollments",
            {"contact": {"phone": "+14155550100"}},
        )  # fmt: skip
        eid = got["enrollment"]["id"]
        clock = Clock()
        await send_due(store, clock, sender)
        code, _ = await api.sms("acme", "+14155550100", "who is this?")
        assert code in (200, 204)
        _, got = await api.call("GET", f"/enrollments/{eid}")
        assert got["enrollment"]["paused_reason"] == "reply_received"
        assert (await api.call("POST", f"/enrollments/{eid}/resume"))[0] == 200
        clock.advance(60_000)  # (resumed at the real now, after the test's clock)
        for _ in range(3):
            await send_due(store, clock, sender)
    assert [m.body for m in sender.messages] == ["Hi", "Thanks for answering"]
    assert (await raw(store, eid))["o"][:1] == "r"
