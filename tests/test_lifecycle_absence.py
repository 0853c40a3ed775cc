"""Out of office: the return date read from an auto-reply in six languages, the pause until
the day after it (capped, defaulted, inside the schedule's window), and its end by itself
through the dispatcher's due queue, with events and the listing by paused_reason."""

from __future__ import annotations

import datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from zoneinfo import ZoneInfo

import pytest

from seqd import models
from seqd.config import LifecycleConfig
from seqd.lifecycle import absence
from seqd.schedules import ScheduleCreate
from seqd.store import event_types
from seqd.store.db import Store
from seqd.times import now_ms, to_rfc3339
from seqd.timing.due import Rules
from seqd.timing.zones import RecipientZone
from tests.dispatchutil import TENANT, Clock, email, enroll, events, raw, read
from tests.lifecycleutil import EMAIL, client, contact, send_due

SENT = datetime.datetime(2026, 6, 3, 9, 30, tzinfo=ZoneInfo("Europe/Berlin"))
BACK = datetime.date(2026, 6, 15)


@pytest.mark.parametrize(
    "text",
    [
        # English
        "Thank you for your email. I am out of the office until June 14 with limited "
        "access to email. I will be back on Monday, June 15.",
        "I'm away and will return on 15/06/2026.",
        # Spanish
        "Gracias por su mensaje. Estoy fuera de la oficina hasta el 14 de junio. "
        "Regresaré el 15 de junio.",
        # French ("Je" is no jeudi)
        "Je suis absent du bureau jusqu'au 14 juin. Je serai de retour le 15 juin 2026.",
        # German
        "Vielen Dank für Ihre Nachricht. Ich bin bis zum 14. Juni nicht im Büro und ab dem "
        "15. Juni wieder erreichbar.",
        # Portuguese ("out" is no outubro)
        "Estou fora do escritório até 14 de junho. Estarei de volta em 15 de junho.",
        # Dutch
        "Ik ben afwezig tot 14 juni. Vanaf 15 juni ben ik weer bereikbaar.",
    ],
    ids=["en", "en-numeric", "es", "fr", "de", "pt", "nl"],
)
def test_return_date_in_six_languages(text: str) -> None:
    assert absence.return_date(text, SENT) == BACK


@pytest.mark.parametrize(
    "text",
    [
        "I am currently out of the office with limited access to email.",
        "Je suis absent. Merci de contacter mon collègue.",
        # A date before the reply is no return date.
        "I have been away since 1 May 2026.",
    ],
)
def test_no_return_date(text: str) -> None:
    assert absence.return_date(text, SENT) is None


def test_return_date_read_relative_to_the_reply() -> None:
    # "Monday" after Wednesday 3 June 2026 is 8 June.
    assert absence.return_date("Back on Monday.", SENT) == datetime.date(2026, 6, 8)


BERLIN = RecipientZone(("Europe/Berlin",), "contact", "UTC", None)
SENT_MS = int(SENT.timestamp() * 1000)
DAY = 86_400_000


def _local(ms: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(ms / 1000, ZoneInfo("Europe/Berlin"))


def test_resume_at_is_the_day_after_the_return_in_the_contacts_zone() -> None:
    at = absence.resume_at(LifecycleConfig(), Rules(), BERLIN, SENT_MS, BACK, "k")
    assert _local(at) == datetime.datetime(2026, 6, 16, tzinfo=ZoneInfo("Europe/Berlin"))


def test_resume_at_capped_and_defaulted() -> None:
    short = LifecycleConfig(max_out_of_office_days=5, out_of_office_default_days=2)
    assert absence.resume_at(short, Rules(), BERLIN, SENT_MS, BACK, "k") == SENT_MS + 5 * DAY
    assert absence.resume_at(short, Rules(), BERLIN, SENT_MS, None, "k") == SENT_MS + 2 * DAY
    assert absence.resume_at(LifecycleConfig(), Rules(), BERLIN, SENT_MS, None, "k") == (
        SENT_MS + 7 * DAY
    )


async def test_resume_at_inside_the_sending_window(store: Store) -> None:
    from seqd.timing.policy import Policy
    from tests.lifecycleutil import config

    schedule = await store.schedules.create(
        TENANT,
        ScheduleCreate(name="office", windows={"tue": [["10:00", "12:00"]]}),
    )
    rules = Policy(config()).rules(TENANT, schedule)
    at = absence.resume_at(LifecycleConfig(), rules, BERLIN, SENT_MS, BACK, "k")
    # The day after the return is Tuesday 16 June: the window opens at 10:00 there.
    assert _local(at) == datetime.datetime(2026, 6, 16, 10, 0, tzinfo=ZoneInfo("Europe/Berlin"))


# -- through the inbound path, the store and the dispatcher ------------------------------------
def auto_reply(text: str, *, sent: datetime.datetime | None = None) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"Ada <{EMAIL}>"
    msg["To"] = "hello@acme.example.com"
    msg["Subject"] = "Automatic reply: Hello"
    msg["Auto-Submitted"] = "auto-replied"
    msg["Message-ID"] = make_msgid(domain="example.com")
    msg["Date"] = format_datetime(sent or datetime.datetime.now(datetime.UTC))
    msg.set_content(text)
    return msg.as_bytes()


async def ooo_sequence(store: Store, on_out_of_office: str) -> models.Sequence:
    body = models.SequenceCreate(
        name="s",
        status="active",
        steps=[email(), email(wait=10)],
        on_out_of_office=on_out_of_office,  # type: ignore[arg-type]
    )
    return await store.sequences.create(TENANT, body)


async def mailed(store: Store, on_out_of_office: str) -> tuple[str, str, Clock]:
    """A contact (zone UTC) in a two-step email sequence, its first step sent."""
    cid = await contact(store, timezone="UTC")
    (e,) = await enroll(store, await ooo_sequence(store, on_out_of_office), [cid])
    clock = Clock()
    await send_due(store, clock)
    return cid, e.id, clock


async def post(store: Store, message: bytes) -> dict:  # type: ignore[type-arg]
    async with client(store) as api:
        code, body = await api.call(
            "POST",
            "/inbound/email",
            data=message,
            headers={"Content-Type": "message/rfc822"},
        )
    assert code == 200, body
    return body  # type: ignore[no-any-return]


def _midnight_utc(day: datetime.date) -> int:
    return int(datetime.datetime(day.year, day.month, day.day, tzinfo=datetime.UTC).timestamp())


async def test_pause_until_return_then_resume_by_itself(store: Store) -> None:
    _, eid, clock = await mailed(store, "pause_until_return")
    back = datetime.datetime.now(datetime.UTC).date() + datetime.timedelta(days=5)
    body = await post(store, auto_reply(f"I am away. I will be back on {back:%d %B %Y}."))
    assert body["kind"] == "auto_reply"
    assert body["enrollments"] == [{"id": eid, "outcome": "paused"}]
    resume_ms = _midnight_utc(back + datetime.timedelta(days=1)) * 1000
    paused = await read(store, eid)
    assert paused.status == "paused" and paused.paused_reason == "out_of_office"
    assert paused.resume_at == to_rfc3339(resume_ms)
    (event,) = [e for e in await events(store) if e["type"] == "sequence.enrollment.paused"]
    shaped = event_types.shape(event["type"], event)
    assert shaped["paused_reason"] == "out_of_office"
    assert shaped["resume_at"] == to_rfc3339(resume_ms)

    # Listed by its reason, with resume_at; the active listing does not show it.
    async with client(store) as api:
        seq_id = paused.sequence_id
        code, page = await api.call(
            "GET", f"/sequences/{seq_id}/enrollments?paused_reason=out_of_office"
        )
        assert code == 200, page
        assert [(e["id"], e["resume_at"]) for e in page["data"]] == [(eid, paused.resume_at)]
        assert page["total"] == 1
        code, page = await api.call(
            "GET", f"/sequences/{seq_id}/enrollments?paused_reason=reply_received"
        )
        assert code == 200 and page["data"] == [] and page["total"] == 0
        code, page = await api.call("GET", "/enrollments?paused_reason=out_of_office")
        assert code == 200, page
        assert [(e["id"], e["resume_at"]) for e in page["data"]] == [(eid, paused.resume_at)]
        code, page = await api.call("GET", f"/sequences/{seq_id}/enrollments?status=active")
        assert code == 200 and page["data"] == []
        code, page = await api.call("GET", "/enrollments?status=active")
        assert code == 200 and page["data"] == []
        code, problem = await api.call(
            "GET", f"/sequences/{seq_id}/enrollments?status=active&paused_reason=out_of_office"
        )
        assert code == 422 and "query.paused_reason" in str(problem)

    # Before resume_at the dispatcher leaves it; from then on it resumes and sends.
    clock.at = resume_ms - 1
    assert (await send_due(store, clock)).messages == []
    assert (await read(store, eid)).status == "paused"
    clock.at = resume_ms + 10 * 60_000
    await send_due(store, clock)
    resumed = await read(store, eid)
    assert resumed.status == "active" and resumed.paused_reason is None
    assert resumed.resume_at is None
    (event,) = [e for e in await events(store) if e["type"] == "sequence.enrollment.resumed"]
    assert event["reason"] == "out_of_office_ended"
    sent = await send_due(store, clock)
    assert [m.enrollment_id for m in sent.messages] == [eid]
    assert (await read(store, eid)).current_step == 2


async def test_pause_until_return_survives_a_restart(store: Store, store_url: str) -> None:
    from seqd.store.db import connect

    _, eid, clock = await mailed(store, "pause_until_return")
    await post(store, auto_reply("Out of the office, no date given."))
    h = await raw(store, eid)
    assert h["pr"] == "out_of_office"
    assert int(h["ra"]) >= now_ms() + 7 * DAY - 60_000  # default_days
    # Another process (a fresh connection, a fresh dispatcher) resumes it at its time.
    other = await Store.open(connect(store_url), store.keys.prefix, store.shards)
    try:
        clock.at = int(h["ra"]) + 11 * 60_000
        await send_due(other, clock)
        assert (await read(other, eid)).status == "active"
        assert [m.enrollment_id for m in (await send_due(other, clock)).messages] == [eid]
    finally:
        await other.close()


async def test_pause_has_no_end(store: Store) -> None:
    _, paused, clock = await mailed(store, "pause")
    await post(store, auto_reply("Back on Monday."))
    enrollment = await read(store, paused)
    assert enrollment.paused_reason == "out_of_office" and enrollment.resume_at is None
    clock.at += 400 * DAY
    await send_due(store, clock)
    assert (await read(store, paused)).status == "paused"


async def test_ignore_changes_nothing(store: Store) -> None:
    _, ignored, _ = await mailed(store, "ignore")
    body = await post(store, auto_reply("Back on Monday."))
    assert body["enrollments"] == [{"id": ignored, "outcome": "ignored"}]
    assert (await read(store, ignored)).status == "active"


async def test_a_reply_during_the_absence_replaces_its_pause(store: Store) -> None:
    from tests.test_lifecycle_email import reply

    _, eid, clock = await mailed(store, "pause_until_return")
    await post(store, auto_reply("Away until next week."))
    body = await post(store, reply())
    assert body["enrollments"] == [{"id": eid, "outcome": "paused"}]
    enrollment = await read(store, eid)
    assert enrollment.paused_reason == "reply_received" and enrollment.resume_at is None
    clock.at += 40 * DAY
    await send_due(store, clock)
    assert (await read(store, eid)).status == "paused"  # no longer ends by itself


async def test_cancel_during_the_absence_takes_it_out_of_the_queue(store: Store) -> None:
    _, eid, clock = await mailed(store, "pause_until_return")
    await post(store, auto_reply("Away until next week."))
    await store.enrollments.transition(TENANT, eid, "cancel")
    clock.at += 40 * DAY
    await send_due(store, clock)
    assert (await read(store, eid)).status == "cancelled"
    assert [e for e in await events(store) if e["type"] == "sequence.enrollment.resumed"] == []
