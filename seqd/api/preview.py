"""POST /sequences/{id}/preview: when each step would go for one contact and from which
sender, computed by the code the enroll path and the dispatcher use (engine/timeline.py)."""

from __future__ import annotations

from datetime import datetime

from aiohttp import web

from seqd import bulk, models, schedules
from seqd.api.auth import tenant_of
from seqd.api.routing import route
from seqd.api.wire import read_body, respond
from seqd.appkeys import CONFIG, POLICY, STORE
from seqd.engine.budgets import Budgets
from seqd.engine.timeline import timeline
from seqd.errors import FieldError, Invalid
from seqd.times import from_rfc3339, now_ms, to_rfc3339
from seqd.timing.local import zone


@route(
    "POST",
    "/sequences/{id}/preview",
    summary="When each step would go for a contact, and from which sender",
    tag="sequences",
    body=schedules.PreviewRequest,
    responses={200: schedules.Preview},
    errors=(404,),
)
async def preview_sequence(request: web.Request) -> web.Response:
    body = await read_body(request, schedules.PreviewRequest)
    store, tenant = request.app[STORE], tenant_of(request)
    if (body.contact_id is None) == (body.contact is None):
        message = "give exactly one of contact_id and contact"
        raise Invalid([FieldError("contact_id", message), FieldError("contact", message)])
    start = now_ms()
    if body.start_at is not None:
        try:
            start = from_rfc3339(body.start_at)
        except ValueError as exc:
            raise Invalid([FieldError("start_at", str(exc))]) from None
    seq = await store.sequences.get(tenant, request.match_info["id"], with_stats=False)
    if body.contact_id is not None:
        contact = await store.contacts.get(tenant, body.contact_id, field="contact_id")
        cid: str | None = contact.id
        tz, phone = contact.timezone, contact.phone
    else:
        assert body.contact is not None
        fields = {
            k: v
            for k, v in {"timezone": body.contact.timezone, "phone": body.contact.phone}.items()
            if v
        }
        region = request.app[CONFIG].contacts.default_region
        errors = models.normalize_contact_fields(fields, region)
        if errors:
            raise Invalid([FieldError(f"contact.{e.path}", e.message) for e in errors])
        cid, tz, phone = None, fields.get("timezone"), fields.get("phone")
    schedule = await bulk.schedule_of(store, tenant, seq)
    config = request.app[CONFIG]
    budgets = Budgets(store, config.senders, config.frequency_caps_for)
    decided = await timeline(
        store, request.app[POLICY], budgets, tenant, seq, schedule, cid, tz, phone, start
    )
    steps = [
        schedules.PreviewStep(
            step=n,
            send_at=to_rfc3339(d.at),
            local_time=datetime.fromtimestamp(d.at / 1000, zone(d.zone)).isoformat(
                timespec="seconds"
            ),
            sender_id=d.sender,
            moved_by=list(d.moved_by),  # type: ignore[arg-type]
            skipped=d.skipped,
        )
        for n, d in enumerate(decided)
    ]
    first = decided[0]
    return respond(
        schedules.Preview(
            timezone=first.zone,
            timezone_source=first.source,  # type: ignore[arg-type]
            steps=steps,
        )
    )
