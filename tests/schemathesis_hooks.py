"""schemathesis hooks for tests/test_schemathesis.py (loaded by the `st` CLI through
SCHEMATHESIS_HOOKS): how to send the raw email bodies, and which 422s a schema cannot
predict.

A JSON Schema states shapes, not facts about the world: whether a phone number is possible
in its country's numbering plan, whether an email address is deliverable-looking, whether
a time zone is in the tz database, whether a webhook URL's host is public (the SSRF guard),
whether a text is a valid template, whether a page token is one this API issued,
whether an Idempotency-Key was already used for another request, whether a sender's
address is one (phone or mailbox as its channel says) and free, whether an SMTP profile
is in the config, whether a messaging service or profile suits the sender's channel, or
whether a sequence's sender pool names the tenant's senders of that channel, whether a
`schedule_id` (or an enroll step's `sequence_id`) names one of the tenant's sequences or
schedules, whether a task step's title, assignee or a webhook step's headers are valid
templates, whether a schedule's windows open on
at least one day, whether a day's intervals are non-empty and do not overlap, whether
the holidays library knows a calendar code, or whether a stats range (`from`) ends after
it starts and spans at most 400 days. The
document names these rules in the fields' descriptions; a schema-valid request that
breaks one of them is answered 422 naming the field.
`positive_data_acceptance_beyond_schema` is schemathesis's own check except that such a
422 passes when every field it names is one of those fields, so any other rejection of
schema-valid input still fails the run.
"""

from __future__ import annotations

import json
import re
from typing import Any

import schemathesis
from schemathesis.checks import CheckContext
from schemathesis.openapi.checks import RejectedPositiveData
from schemathesis.specs.openapi.checks import positive_data_acceptance

# The last name in an error's path (`contact.phone`, `query.page_token`, `steps[2].body`)
# for the rules a schema cannot state (see the module docstring).
BEYOND_SCHEMA = frozenset(
    {
        "phone",
        "email",
        "timezone",
        "value",
        "url",
        "page_token",
        "body",
        "subject",
        "Idempotency-Key",
        "address",
        "smtp_profile",
        "messaging_service_sid",
        "sms",
        "schedule_id",
        "sequence_id",
        "title",
        "assignee",
        "headers",
        "default_timezone",
        "holidays",
        "windows",
        "from",
        # Names paused enrollments only: with another status it is a 422.
        "paused_reason",
        # A sender's mailbox: email senders only, a password on create, TLS off the loopback.
        "imap",
        "password",
        "tls",
        # Step conditions: an earlier step, nesting depth and size (seqd/conditions.py).
        *("step", "only_if", "skip_if", "all", "any", "not"),
        # Contact events: an RFC 3339 time, properties' size as JSON.
        *("occurred_at", "properties"),
        *("mon", "tue", "wed", "thu", "fri", "sat", "sun"),
        # A step's variant ids are unique (`steps[0].variants[1].id`); a winner is one of
        # the step's variants.
        "id",
        "variant",
    }
)
_LAST_NAME = re.compile(r"([A-Za-z_-]+)(?:\[\d+\])*$")


@schemathesis.serializer("message/rfc822")
def _raw_email(_ctx: Any, value: Any) -> bytes:
    """The inbound email routes take a raw message; anything generated goes in as text."""
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8", "surrogatepass")


def _beyond_schema(response: Any) -> bool:
    if response.status_code != 422:
        return False
    try:
        paths = [e["path"] for e in json.loads(response.content)["errors"]]
    except (ValueError, KeyError, TypeError):
        return False
    names = [m.group(1) if (m := _LAST_NAME.search(p)) else p for p in paths]
    return bool(names) and all(n in BEYOND_SCHEMA for n in names)


@schemathesis.check
def positive_data_acceptance_beyond_schema(
    ctx: CheckContext, response: Any, case: Any
) -> bool | None:
    try:
        return positive_data_acceptance(ctx, response, case)
    except RejectedPositiveData:
        if _beyond_schema(response):
            return None
        raise
