"""Contact events: POST /contacts/{id}/events and POST /contacts/events/batch.

An event records what a contact did elsewhere (a meeting booked, a deal won); a sequence
whose `exit_on` names it completes the contact's enrollments in it (seqd/goals.py). The
batch takes up to 1,000 events, each read on its own as the enrollment batch does: a bad
item is a problem object in its place (`index`, paths under `items[i].`), the others go
through.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from aiohttp import web
from msgspec import Meta

from seqd import contact_events, models
from seqd.api.auth import tenant_of
from seqd.api.enrollment_batch import item_problem
from seqd.api.problems import Problem
from seqd.api.routing import route
from seqd.api.wire import read_body, respond
from seqd.appkeys import CONFIG, STORE
from seqd.contact_events import ContactEventCreate, ContactEventItem, ContactEventResult
from seqd.errors import Invalid, SeqdError, field_error
from seqd.store.lifecycle import NewContactEvent

TAG = "contacts"


def _retention_ms(request: web.Request) -> int:
    return request.app[CONFIG].webhooks.events_retention_hours * 3_600_000


@route(
    "POST",
    "/contacts/{id}/events",
    summary="Record a contact event; goals (exit_on) it meets complete enrollments; "
    "idempotent per event id",
    tag=TAG,
    body=ContactEventCreate,
    responses={201: ContactEventResult, 200: ContactEventResult},
    errors=(404,),
)
async def create_contact_event(request: web.Request) -> web.Response:
    body = await read_body(request, ContactEventCreate)
    event = contact_events.prepare(body)
    out = await contact_events.record(
        request.app[STORE],
        tenant_of(request),
        request.match_info["id"],
        event,
        _retention_ms(request),
    )
    return respond(out, 200 if out.idempotent else 201)


class BatchRecorded(ContactEventResult, tag_field="outcome", tag="recorded"):
    """An event recorded (`idempotent`: its id was recorded before)."""


class EventBatchProblem(Problem, tag_field="outcome", tag="problem"):
    """An event that was not recorded: a problem object with the item's `index`."""


class ContactEventBatchResult(models.Output, kw_only=True):
    results: list[BatchRecorded | EventBatchProblem]


class ContactEventBatchBody(models.Input, kw_only=True):
    """Up to 1,000 events, each a ContactEventItem (a contact event and its contact_id)."""

    items: Annotated[
        list[msgspec.Raw],
        Meta(
            min_length=1,
            max_length=models.BATCH_MAX_ITEMS,
            description="each a ContactEventItem; one that is not is a problem result",
        ),
    ]


_decode_item = msgspec.json.Decoder(ContactEventItem).decode


def _problem(error: SeqdError, index: int) -> EventBatchProblem:
    return EventBatchProblem(**msgspec.structs.asdict(item_problem(error, index)))


@route(
    "POST",
    "/contacts/events/batch",
    summary="Record up to 1,000 contact events; one result per item, in order",
    tag=TAG,
    body=ContactEventBatchBody,
    responses={200: ContactEventBatchResult},
)
async def create_contact_event_batch(request: web.Request) -> web.Response:
    raw = await read_body(request, ContactEventBatchBody)
    results: list[BatchRecorded | EventBatchProblem | None] = [None] * len(raw.items)
    good: list[int] = []
    items: list[tuple[str, NewContactEvent]] = []
    for i, text in enumerate(raw.items):
        try:
            body = _decode_item(text)
            items.append((body.contact_id, contact_events.prepare(body, f"items[{i}].")))
            good.append(i)
        except msgspec.ValidationError as exc:
            results[i] = _problem(Invalid([field_error(exc, f"items[{i}]")]), i)
        except SeqdError as exc:
            results[i] = _problem(exc, i)
    outcomes = await contact_events.record_all(
        request.app[STORE], tenant_of(request), items, _retention_ms(request)
    )
    for i, outcome in zip(good, outcomes, strict=True):
        if isinstance(outcome, SeqdError):
            if outcome.extra.get("field") == "id":
                outcome.extra["field"] = f"items[{i}].contact_id"
            results[i] = _problem(outcome, i)
        else:
            results[i] = BatchRecorded(**msgspec.structs.asdict(outcome))
    return respond(ContactEventBatchResult(results=[r for r in results if r is not None]))
