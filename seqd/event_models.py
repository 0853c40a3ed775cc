"""API shapes of events, webhook endpoints and deliveries (beside `seqd.models`, same rules):
on the floor, so the store returns them without importing `events/`."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import UNSET, Meta, UnsetType

from seqd import event_names
from seqd.models import Input, Output, Page, Timestamp

Url = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=2000,
        description="http(s) URL of a public host (unless webhooks.allow_private_targets)",
    ),
]
EventType = Annotated[str, Meta(min_length=1, max_length=100)]
Subscription = Annotated[
    list[EventType],
    Meta(
        min_length=1,
        max_length=50,
        description='event types, or ["*"] for every type',
        # Checked by `event_types.check_subscription`, stated here for the document.
        extra_json_schema={
            "anyOf": [
                {"items": {"const": event_names.WILDCARD}, "maxItems": 1},
                {"items": {"enum": sorted(event_names.KNOWN)}},
            ]
        },
    ),
]
Description = Annotated[str, Meta(max_length=500)]


class Event(Output, kw_only=True):
    """One event: the body of its webhook and an item of GET /events."""

    id: str
    type: str
    created_at: Timestamp
    data: dict[str, Any]


class EventEnvelope(Output, kw_only=True):
    event: Event


class EventList(Output, kw_only=True):
    data: list[Event]
    # A page can hold fewer than `limit` events while more follow (a filter scans the log in
    # bounded steps): follow next_page_token until it is null.
    next_page_token: str | None
    total: Annotated[
        int | None,
        Meta(
            description="events in the log; null when a filter is given: counting the "
            "matches would read the whole log, where a page reads a bounded part of it"
        ),
    ] = None


class EndpointCreate(Input, kw_only=True):
    url: Url
    events: Subscription
    description: Description = ""


class EndpointPatch(Input, kw_only=True):
    url: Url | UnsetType = UNSET
    events: Subscription | UnsetType = UNSET
    description: Description | UnsetType = UNSET
    enabled: bool | UnsetType = UNSET


class WebhookEndpoint(Output, kw_only=True):
    id: str
    # A password in it (and secret-looking query values) shown as `***`.
    url: Annotated[str, Meta(description="the URL, its password masked as ***")]
    events: list[str]
    description: str = ""
    enabled: bool
    # Why seqd disabled it ("gone": the receiver answered 410); null when enabled.
    disabled_reason: str | None = None
    created_at: Timestamp
    updated_at: Timestamp
    # Until then the secret before the last rotation still signs, as a second signature.
    previous_secret_expires_at: Timestamp | None = None


class EndpointEnvelope(Output, kw_only=True):
    webhook_endpoint: WebhookEndpoint


class EndpointWithSecret(Output, kw_only=True):
    """Create and rotate-secret: the signing secret, shown in this response only."""

    webhook_endpoint: WebhookEndpoint
    secret: Annotated[str, Meta(description="whsec_ + base64 of the key")]


class EndpointList(Page, kw_only=True):
    data: list[WebhookEndpoint]


class WebhookDelivery(Output, kw_only=True):
    id: str
    endpoint_id: str
    event_id: str
    event_type: str
    status: Literal["pending", "failed"]
    attempts: int
    next_attempt_at: Timestamp | None = None
    last_attempt_at: Timestamp | None = None
    # The receiver's HTTP status of the last attempt; null when there was no answer.
    last_status: int | None = None
    last_error: str | None = None
    created_at: Timestamp
    failed_at: Timestamp | None = None


class DeliveryEnvelope(Output, kw_only=True):
    delivery: WebhookDelivery


class DeliveryList(Page, kw_only=True):
    data: list[WebhookDelivery]
