"""Out of office: the return date an automatic reply gives, and when the pause it causes ends.

A sequence's `on_out_of_office = "pause_until_return"` pauses the enrollment until the day
after the return date, read from the reply's text by `dateparser` (English, Spanish,
French, German, Portuguese and Dutch phrasings: "back on Monday, June 15", "de retour le
15 juin", "ab dem 15. Juni wieder erreichbar", ...) relative to the reply's Date header in
the contact's zone; the latest date the text names between that day and a year after is
taken for the return (an absence is announced as "from ... until ..., back on ..."). The
pause ends at most `max_out_of_office_days` after the reply, `out_of_office_default_days`
after it when no date is found, and inside the sequence's sending window when it has a
schedule (the first open moment from then, as the dispatcher would send).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import re
from email.message import EmailMessage
from typing import Any

from seqd import models
from seqd.config import Config, LifecycleConfig
from seqd.errors import NotFound
from seqd.store.db import Store
from seqd.store.lifecycle import Reaction
from seqd.timing.due import Rules, StepTiming, due
from seqd.timing.local import wall_ms, zone
from seqd.timing.policy import Policy, jitter_key
from seqd.timing.zones import RecipientZone

# The languages the return date is read in (dateparser's codes).
LANGUAGES = ("en", "es", "fr", "de", "pt", "nl")
# Text past this is a quoted message or a signature, not the announcement.
TEXT_CHARS = 3000
DAY_MS = 86_400_000
# A found date further than this after the reply is no return date (a phone number read
# as one, a year named in a signature).
HORIZON_DAYS = 366
# dateparser finds dates in words that only look like abbreviations ("Je" for jeudi,
# "out" for outubro): a match must hold a digit or be a word at least this long.
_MIN_WORD = 5
_DIGIT = re.compile(r"\d")
_TAGS = re.compile(r"<[^>]*>")
_QUOTED = re.compile(r"^\s*>.*$", re.MULTILINE)


def announcement(msg: EmailMessage) -> str:
    """The reply's own text (plain, else HTML without tags), without quoted lines."""
    body = msg.get_body(preferencelist=("plain", "html"))
    if body is None:
        return ""
    try:
        text = str(body.get_content())
    except (LookupError, ValueError):
        return ""
    if body.get_content_subtype() == "html":
        text = _TAGS.sub(" ", text)
    return _QUOTED.sub("", text)[:TEXT_CHARS]


def _kept(matched: str) -> bool:
    return bool(_DIGIT.search(matched)) or len(matched.strip()) >= _MIN_WORD


def return_date(text: str, sent: datetime.datetime) -> datetime.date | None:
    """The return date `text` gives, read relative to `sent` (the reply's Date as local
    wall time in the contact's zone); None when it names none."""
    from dateparser.search import search_dates

    settings: dict[str, Any] = {
        "RELATIVE_BASE": sent.replace(tzinfo=None),
        "PREFER_DATES_FROM": "future",
        "RETURN_AS_TIMEZONE_AWARE": False,
    }
    found = search_dates(text, languages=list(LANGUAGES), settings=settings) or []
    first, last = sent.date(), sent.date() + datetime.timedelta(days=HORIZON_DAYS)
    days = [when.date() for matched, when in found if _kept(matched)]
    days = [d for d in days if first <= d <= last]
    return max(days) if days else None


async def read_return(text: str, sent: datetime.datetime) -> datetime.date | None:
    """`return_date` off the event loop (dateparser takes milliseconds a text, and its
    language data a fraction of a second the first time)."""
    if not text.strip():
        return None
    return await asyncio.to_thread(return_date, text, sent)


def resume_at(
    config: LifecycleConfig,
    rules: Rules,
    recipient: RecipientZone,
    sent_ms: int,
    returned: datetime.date | None,
    key: str,
) -> int:
    """When the pause ends (ms): the start of the day after `returned` in the contact's
    zone (the default days after `sent_ms` without one), capped, then the first moment the
    sequence's rules (its schedule's window) allow from then; `key` fixes the jitter."""
    cap = sent_ms + config.max_out_of_office_days * DAY_MS
    if returned is None:
        at = sent_ms + config.out_of_office_default_days * DAY_MS
    else:
        at = wall_ms(zone(recipient.used), returned.toordinal() + 1, 0)
    at = max(min(at, cap), sent_ms)
    return due(rules, StepTiming(), recipient, at, key, waits=False).at


async def pause(
    config: Config,
    store: Store,
    tenant: str,
    *,
    text: str,
    sent_ms: int,
    enrollments: list[str],
    contact_id: str | None,
) -> tuple[str | None, list[Reaction]]:
    """Apply an out-of-office reply of `text`, sent at `sent_ms`, to the enrollment it
    names (the first of `enrollments` found) or else to the contact's: (contact id,
    what each enrollment did)."""
    policy = Policy(config)
    read: dict[str, datetime.date | None] = {}
    contact: models.Contact | None = None

    async def until(seq: models.Sequence) -> int:
        schedule = None
        if seq.schedule_id is not None:
            with contextlib.suppress(NotFound):
                schedule = await store.schedules.get(tenant, seq.schedule_id)
        timezone, phone = (contact.timezone, contact.phone) if contact else (None, None)
        recipient = policy.recipient(tenant, schedule, timezone, phone)
        if recipient.used not in read:
            local = datetime.datetime.fromtimestamp(sent_ms / 1000, zone(recipient.used))
            read[recipient.used] = await read_return(text, local)
        key = jitter_key(contact.id if contact else "", seq.id, -1)
        rules = policy.rules(tenant, schedule)
        return resume_at(config.lifecycle, rules, recipient, sent_ms, read[recipient.used], key)

    absent = store.lifecycle.absent
    for eid in enrollments:
        owner = await store.lifecycle.enrollment_owner(eid)
        if owner is None or owner[0] != tenant:
            continue
        contact = await _contact(store, tenant, owner[1])
        reactions = await absent(tenant, "email", until, enrollment_id=eid)
        if reactions:
            return owner[1], reactions
    if contact_id is None:
        return None, []
    contact = await _contact(store, tenant, contact_id)
    return contact_id, await absent(tenant, "email", until, contact_id=contact_id)


async def _contact(store: Store, tenant: str, cid: str) -> models.Contact | None:
    try:
        return await store.contacts.get(tenant, cid)
    except NotFound:
        return None
