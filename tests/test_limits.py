"""Every input limit answers a clear 4xx naming what is too big: body size (413), string
lengths, steps per sequence, items per batch, metadata size and depth, attributes, page
size (422 with the field's path)."""

from __future__ import annotations

import io
from typing import Any

import pytest

from seqd import models
from tests.conftest import Api

STEP = {"kind": "sms", "body": "hi"}
SEQ = {"name": "S", "status": "active", "steps": [STEP]}


async def _sequence_and_contact(api: Api) -> tuple[str, str]:
    _, s = await api.call("POST", "/sequences", SEQ)
    _, c = await api.call("POST", "/contacts", {"phone": "+14155550100"})
    return s["sequence"]["id"], c["contact"]["id"]  # type: ignore[index]


def _paths(body: Any) -> list[str]:
    return [e["path"] for e in body["errors"]]


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/contacts", "application/json"),
        ("/sequences/seq_x/enrollments/batch", "application/json"),
        ("/inbound/email", "message/rfc822"),
    ],
)
async def test_body_size_413(api: Api, path: str, content_type: str) -> None:
    if "seq_x" in path:  # the sequence must exist: a missing one is a 404 first
        sid, _ = await _sequence_and_contact(api)
        path = path.replace("seq_x", sid)
    big = b'{"x": "' + b"x" * (1024 * 1024) + b'"}'
    resp = await api.client.post(  # type: ignore[attr-defined]
        "/v1" + path,
        data=io.BytesIO(big),
        headers={**api.headers(), "Content-Type": content_type},
    )
    assert resp.status == 413 and resp.content_type == "application/problem+json"
    body = await resp.json(content_type=None)
    assert "1048576 bytes" in body["detail"]


@pytest.mark.parametrize(
    ("path", "payload", "field"),
    [
        ("/contacts", {"phone": "+14155550100", "first_name": "x" * 201}, "first_name"),
        ("/contacts", {"phone": "+14155550100", "external_id": "x" * 201}, "external_id"),
        ("/contacts", {"phone": "+1" + "4" * 70}, "phone"),
        ("/contacts", {"email": "a@" + "b" * 320 + ".com"}, "email"),
        ("/sequences", {**SEQ, "name": "x" * 201}, "name"),
        ("/sequences", {**SEQ, "description": "x" * 2001}, "description"),
        ("/sequences", {**SEQ, "steps": [{"kind": "sms", "body": "x" * 10_001}]}, "steps[0].body"),
        (
            "/sequences",
            {**SEQ, "steps": [{"kind": "email", "body": "x", "subject": "s" * 501}]},
            "steps[0].subject",
        ),
        ("/webhook-endpoints", {"url": "https://a.example/" + "x" * 2000, "events": ["*"]}, "url"),
        (
            "/webhook-endpoints",
            {"url": "https://a.example/", "events": ["*"], "description": "x" * 501},
            "description",
        ),
        ("/webhook-endpoints", {"url": "https://a.example/", "events": ["x" * 101]}, "events[0]"),
        ("/suppressions", {"channel": "email", "value": "x" * 321}, "value"),
    ],
)
async def test_string_lengths_422(api: Api, path: str, payload: dict, field: str) -> None:
    status, body = await api.call("POST", path, payload)
    assert status == 422, body
    assert field in _paths(body), body


async def test_attributes_count_key_and_value_422(api: Api) -> None:
    base = {"phone": "+14155550100"}
    for attributes, field in [
        ({f"k{i}": 1 for i in range(101)}, "attributes"),
        ({"k" * 101: 1}, "attributes"),
        ({"k": "v" * 2001}, "attributes[...]"),
    ]:
        status, body = await api.call("POST", "/contacts", {**base, "attributes": attributes})
        assert status == 422 and field in _paths(body), body


async def test_steps_per_sequence_422(api: Api) -> None:
    status, body = await api.call("POST", "/sequences", {**SEQ, "steps": [STEP] * 51})
    assert status == 422 and _paths(body) == ["steps"], body
    status, _ = await api.call("POST", "/sequences", {**SEQ, "steps": [STEP] * 50})
    assert status == 201


async def test_webhook_event_types_per_endpoint_422(api: Api) -> None:
    events = [f"sequence.t{i}" for i in range(51)]
    status, body = await api.call(
        "POST", "/webhook-endpoints", {"url": "https://a.example/", "events": events}
    )
    assert status == 422 and "events" in _paths(body), body


async def test_items_per_batch_422(api: Api) -> None:
    sid, cid = await _sequence_and_contact(api)
    items = [{"contact_id": cid}] * (models.BATCH_MAX_ITEMS + 1)
    status, body = await api.call("POST", f"/sequences/{sid}/enrollments/batch", {"items": items})
    assert status == 422 and _paths(body) == ["items"], body


async def test_metadata_size_keys_and_depth_422(api: Api) -> None:
    sid, cid = await _sequence_and_contact(api)
    path = f"/sequences/{sid}/enrollments"
    too_big = {"blob": "x" * models.METADATA_MAX_BYTES}
    too_many = {f"k{i}": i for i in range(101)}
    for metadata in (too_big, too_many):
        status, body = await api.call("POST", path, {"contact_id": cid, "metadata": metadata})
        assert status == 422 and _paths(body) == ["metadata"], body
    # In a batch, the item's path.
    status, body = await api.call(
        "POST", f"{path}/batch", {"items": [{"contact_id": cid, "metadata": too_big}]}
    )
    assert status == 200 and body["results"][0]["errors"][0]["path"] == "items[0].metadata"  # type: ignore[index]
    # Deep nesting is refused at the edge (a clear 4xx), never a crash in a decoder.
    deep = b'{"contact_id": "' + cid.encode() + b'", "metadata": {"a": ' + b"[" * 100_000
    deep += b"]" * 100_000 + b"}}"
    resp = await api.client.post(  # type: ignore[attr-defined]
        "/v1" + path, data=deep, headers={**api.headers(), "Content-Type": "application/json"}
    )
    assert resp.status in (400, 422), await resp.text()
    assert resp.content_type == "application/problem+json"
    resp = await api.client.post(  # type: ignore[attr-defined]
        f"/v1{path}/batch",
        data=b'{"items": [' + deep + b"]}",
        headers={**api.headers(), "Content-Type": "application/json"},
    )
    assert resp.status in (400, 422), await resp.text()
    assert resp.content_type == "application/problem+json"


@pytest.mark.parametrize(
    "path",
    [
        "/contacts",
        "/sequences",
        "/events",
        "/suppressions",
        "/webhook-endpoints",
        "/sequences/{sid}/enrollments",
        "/webhook-endpoints/{wid}/failed-deliveries",
    ],
)
async def test_page_size_422_on_every_list(api: Api, path: str) -> None:
    sid, _ = await _sequence_and_contact(api)
    _, w = await api.call(
        "POST", "/webhook-endpoints", {"url": "https://93.184.216.34/h", "events": ["*"]}
    )
    path = path.format(sid=sid, wid=w["webhook_endpoint"]["id"])  # type: ignore[index]
    for bad in ("0", "201", "-1", "many"):
        status, body = await api.call("GET", f"{path}?limit={bad}")
        assert status == 422 and _paths(body) == ["query.limit"], (path, bad, body)
    assert (await api.call("GET", f"{path}?limit=200"))[0] == 200


async def test_idempotency_key_length_422(api: Api) -> None:
    status, body = await api.call(
        "POST",
        "/contacts",
        {"phone": "+14155550100"},
        headers={**api.headers(), "Idempotency-Key": "k" * 300},
    )
    assert status == 422 and _paths(body) == ["header.Idempotency-Key"], body


async def test_intake_entry_nested_too_deeply_is_rejected_not_a_poison_pill(
    fake_store: object,
) -> None:
    """An intake entry whose metadata nests past the decoder's limit is that entry's
    rejection, not an exception that fails (and re-delivers) its whole batch."""
    from seqd import intake

    deep = "[" * 100_000 + "]" * 100_000
    for field in ("metadata", "contact"):
        fields = {"tenant": "acme", "sequence_id": "seq_x", field: '{"a": ' + deep + "}"}
        parsed = intake.parse(fake_store, "1-0", fields, None)  # type: ignore[arg-type]
        assert parsed.rejected is not None
        assert (parsed.rejected.field or "").startswith(field)
