"""Inbound webhooks: Twilio messages and status callbacks, raw inbound email.

Twilio's requests carry no API key: `X-Twilio-Signature` authenticates them, checked
against the URL seqd is configured to be reached at (`http.public_url`). A bad or missing
signature is a 403 and nothing changes.
"""

from __future__ import annotations

import hmac
from typing import Annotated, cast

import msgspec
import structlog
from aiohttp import web
from msgspec import Meta

from seqd import models
from seqd.api.auth import tenant_of
from seqd.api.routing import route
from seqd.api.wire import read_form, respond
from seqd.appkeys import CONFIG, STORE
from seqd.config import Config
from seqd.errors import FieldError, Forbidden, Invalid, NotFound, UnsupportedMediaType, field_error
from seqd.lifecycle import email_inbound, sms_inbound, twilio_signature

log = structlog.get_logger(__name__)

TAG = "inbound"
TWIML_EMPTY = '<?xml version="1.0" encoding="UTF-8"?><Response/>'
RawMessage = Annotated[
    str, Meta(description="a raw RFC 5322 message", extra_json_schema={"format": "binary"})
]


class TwilioMessage(msgspec.Struct, kw_only=True):
    """Twilio's inbound message webhook (the fields seqd reads; others are ignored)."""

    From: str = ""
    To: str = ""
    Body: str = ""
    MessageSid: str = ""
    MessagingServiceSid: str = ""


class TwilioStatus(msgspec.Struct, kw_only=True):
    """Twilio's message status callback (the fields seqd reads)."""

    MessageSid: str = ""
    MessageStatus: str = ""
    ErrorCode: str = ""
    To: str = ""


class StatusQuery(msgspec.Struct, kw_only=True):
    """Set by seqd's Twilio sender on the StatusCallback URL."""

    e: Annotated[str, Meta(description="enrollment id")]
    s: Annotated[int, Meta(ge=0, description="step index")]


def _twiml() -> web.Response:
    return web.Response(text=TWIML_EMPTY, content_type="text/xml")


async def _signed_form(request: web.Request) -> tuple[list[tuple[str, str]], str, str | None]:
    """The POST parameters, the URL Twilio signed, and the signature presented."""
    params = await read_form(request)
    config = request.app[CONFIG]
    url = config.http.public_url.rstrip("/") + request.raw_path
    return params, url, request.headers.get(twilio_signature.HEADER)


def _verified(
    config: Config, tenants: list[str], url: str, params: list[tuple[str, str]], sig: str | None
) -> list[str]:
    return [
        t
        for t in tenants
        if twilio_signature.valid(config.channels_for(t).twilio.auth_token, url, params, sig)
    ]


def _forbidden() -> Forbidden:
    return Forbidden("the X-Twilio-Signature is missing or does not match")


@route(
    "POST",
    "/inbound/twilio/sms",
    summary="Twilio inbound message webhook: replies, opt-out and opt-in keywords",
    tag=TAG,
    body=TwilioMessage,
    body_content_type="application/x-www-form-urlencoded",
    responses={200: None},
    errors=(403,),
    auth=False,
    media={200: "text/xml"},
)
async def twilio_sms(request: web.Request) -> web.Response:
    config, store = request.app[CONFIG], request.app[STORE]
    params, url, sig = await _signed_form(request)
    fields = dict(params)
    candidates = await sms_inbound.tenants_for_address(
        config,
        store,
        fields.get("To", ""),
        fields.get("MessagingServiceSid", ""),
        await store.tenants.names(),
    )
    owners = _verified(config, candidates, url, params, sig)
    if not owners:
        log.warning("twilio.signature_rejected", path=request.path, candidates=candidates)
        raise _forbidden()
    try:
        phone = models.normalize_phone(fields.get("From", ""), None)
    except ValueError as exc:
        raise Invalid.field("From", str(exc)) from None
    sid = fields.get("MessageSid") or fields.get("SmsSid", "")
    await sms_inbound.receive_sms(config, store, owners, phone, fields.get("Body", ""), sid)
    return _twiml()


@route(
    "POST",
    "/inbound/twilio/status",
    summary="Twilio message status callback: delivery recorded on the step",
    tag=TAG,
    body=TwilioStatus,
    body_content_type="application/x-www-form-urlencoded",
    query=StatusQuery,
    responses={204: None},
    errors=(403,),
    auth=False,
)
async def twilio_status(request: web.Request) -> web.Response:
    config, store = request.app[CONFIG], request.app[STORE]
    params, url, sig = await _signed_form(request)
    eid = request.query.get("e", "")
    owner = await store.lifecycle.enrollment_owner(eid)
    # Unknown enrollment: still authenticate, so a forger learns nothing from the answer.
    candidates = [owner[0]] if owner else sms_inbound.tenants(config)
    if not _verified(config, candidates, url, params, sig):
        log.warning("twilio.signature_rejected", path=request.path)
        raise _forbidden()
    try:
        query = msgspec.convert(dict(request.query), StatusQuery, strict=False)
    except msgspec.ValidationError as exc:
        err = field_error(exc)
        raise Invalid([FieldError(f"query.{err.path}", err.message)]) from None
    fields = dict(params)
    status = fields.get("MessageStatus", "").strip().lower()
    if owner is None or not status:
        return web.Response(status=204)
    try:
        await sms_inbound.receive_status(
            config,
            store,
            owner[0],
            owner[1],
            query.e,
            query.s,
            status,
            message_sid=fields.get("MessageSid") or fields.get("SmsSid", ""),
            error_code=fields.get("ErrorCode", "").strip(),
            to=fields.get("To", ""),
        )
    except NotFound:
        pass  # deleted between the two reads; Twilio must not retry
    return web.Response(status=204)


async def _raw_message(request: web.Request) -> bytes:
    if request.content_type != "message/rfc822":
        raise UnsupportedMediaType(f"send message/rfc822, not {request.content_type}")
    raw = await request.read()
    if not raw.strip():
        raise Invalid.field("body", "empty message")
    return raw


@route(
    "POST",
    "/inbound/email",
    summary="Ingest an inbound email (reply, auto-reply, bounce report, unsubscribe)",
    tag=TAG,
    body=cast(type, RawMessage),
    body_content_type="message/rfc822",
    responses={200: email_inbound.IngestResult},
)
async def inbound_email(request: web.Request) -> web.Response:
    raw = await _raw_message(request)
    config, store = request.app[CONFIG], request.app[STORE]
    return respond(await email_inbound.ingest(config, store, raw, tenant_of(request)))


def tenant_by_secret(config: Config, secret: str) -> str | None:
    for name, tenant in config.tenants.items():
        own = tenant.inbound_email_secret
        if own and hmac.compare_digest(own.encode(), secret.encode()):
            return name
    return None


@route(
    "POST",
    "/inbound/email/{secret}",
    summary="Ingest an inbound email, authenticated by the tenant's inbound_email_secret",
    tag=TAG,
    body=cast(type, RawMessage),
    body_content_type="message/rfc822",
    responses={200: email_inbound.IngestResult},
    errors=(404,),
    auth=False,
)
async def inbound_email_by_secret(request: web.Request) -> web.Response:
    config, store = request.app[CONFIG], request.app[STORE]
    tenant = tenant_by_secret(config, request.match_info["secret"])
    if tenant is None:
        raise NotFound("no such inbound address")
    raw = await _raw_message(request)
    return respond(await email_inbound.ingest(config, store, raw, tenant))
