"""The served OpenAPI document: valid 3.1, and every route of the app is in it."""

from __future__ import annotations

import re

from openapi_spec_validator import validate

from seqd.api.routing import ROUTES
from tests.conftest import Api


async def _document(api: Api) -> dict:
    resp = await api.client.get("/v1/openapi.json")  # type: ignore[attr-defined]
    assert resp.status == 200
    doc: dict = await resp.json()
    return doc


async def test_document_is_valid_openapi_31(api: Api) -> None:
    doc = await _document(api)
    assert doc["openapi"].startswith("3.1")
    validate(doc)


async def test_every_route_of_the_app_is_documented(api: Api) -> None:
    doc = await _document(api)
    app = api.client.app  # type: ignore[attr-defined]
    # The dashboard's pages (/ui) are HTML for people, not the API: outside the document.
    served = {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD"
        and route.resource is not None
        and not route.resource.canonical.startswith("/ui/")
    }
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert served, "the app has no routes"
    assert served <= documented, f"missing from OpenAPI: {sorted(served - documented)}"
    assert len(ROUTES) == len(documented)


async def test_operations_carry_bodies_params_and_errors(api: Api) -> None:
    doc = await _document(api)
    create = doc["paths"]["/v1/contacts"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ContactCreate"
    )
    assert {"201", "401", "422", "409"} <= set(create["responses"])
    listing = doc["paths"]["/v1/contacts"]["get"]
    names = {p["name"] for p in listing["parameters"]}
    assert {"limit", "page_token", "phone", "email", "external_id"} <= names
    limit = next(p for p in listing["parameters"] if p["name"] == "limit")
    assert limit["schema"]["maximum"] == 200 and limit["schema"]["minimum"] == 1
    get_one = doc["paths"]["/v1/enrollments/{id}"]["get"]
    assert get_one["parameters"][0] == {
        "name": "id",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
    }
    assert "ContactCreate" in doc["components"]["schemas"]
    assert doc["paths"]["/v1/openapi.json"]["get"]["security"] == []


async def test_every_post_declares_the_idempotency_key_and_its_answers(api: Api) -> None:
    """A generated client knows every status an operation can answer: the Idempotency-Key
    header's 422 (malformed, or reused for another request) and 409 (still running) on
    every authenticated POST, with or without a body."""
    doc = await _document(api)
    posts = [
        (path, op)
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if method == "post" and op["security"]
    ]
    assert len(posts) > 10
    for path, op in posts:
        assert {"409", "422"} <= set(op["responses"]), path
        header = next(p for p in op["parameters"] if p["name"] == "Idempotency-Key")
        assert header["in"] == "header" and not header["required"], path
    status, body = await api.call(
        "POST",
        "/contacts",
        {"phone": "+14155550100"},
        headers={**api.headers(), "Idempotency-Key": "k" * 256},
    )
    assert status == 422 and body["errors"][0]["path"] == "header.Idempotency-Key"  # type: ignore[index]


async def test_document_states_the_rules_the_api_enforces(api: Api) -> None:
    schemas = (await _document(api))["components"]["schemas"]
    # A contact needs a phone or an email.
    assert [b["required"] for b in schemas["ContactCreate"]["anyOf"]] == [["phone"], ["email"]]
    email_field = schemas["ContactCreate"]["properties"]["email"]["anyOf"]
    assert {"type": "null"} in email_field
    assert any(s.get("format") == "email" for s in email_field)
    # A contact's text fields are one line (they can end up in an email header).
    name = schemas["ContactCreate"]["properties"]["first_name"]["anyOf"]
    one_line = re.compile(next(s["pattern"] for s in name if s.get("type") == "string"))
    assert one_line.search("Ada Lovelace") and one_line.search("")
    assert not any(one_line.search(f"Ada{c}") for c in "\n\r\x00\u2028\u2029")
    # An enrollment names exactly one of contact_id and contact.
    assert [b["required"] for b in schemas["EnrollmentCreate"]["oneOf"]] == [
        ["contact_id"],
        ["contact"],
    ]
    # Only email steps take a subject, and they need one.
    email, others = schemas["StepIn"]["oneOf"]
    assert email["properties"]["kind"]["enum"] == ["email"] and email["required"] == ["subject"]
    assert "sms" in others["properties"]["kind"]["enum"]
    assert others["properties"]["subject"] == {"type": "null"}
    # Webhook subscriptions: known event types, or "*" alone.
    subscription = schemas["EndpointCreate"]["properties"]["events"]
    alone, known = subscription["anyOf"]
    assert alone["items"] == {"const": "*"} and alone["maxItems"] == 1
    assert "sequence.enrollment.created" in known["items"]["enum"]


async def test_events_filters_are_documented(api: Api) -> None:
    op = (await _document(api))["paths"]["/v1/events"]["get"]
    params = {p["name"]: p["schema"] for p in op["parameters"]}
    since = next(s for s in params["since"]["anyOf"] if s.get("type") == "string")
    assert since["format"] == "date-time"
    one = next(s for s in params["type"]["anyOf"] if s.get("type") == "string")
    pattern = re.compile(one["pattern"])
    assert pattern.fullmatch("sequence.enrollment.created, contact.opted_out")
    assert not pattern.fullmatch("sequence.nothing")


async def test_patch_bodies_may_be_omitted(api: Api) -> None:
    doc = await _document(api)
    assert doc["paths"]["/v1/sequences/{id}"]["patch"]["requestBody"]["required"] is False
    assert doc["paths"]["/v1/contacts"]["post"]["requestBody"]["required"] is True


async def test_links_lead_from_created_objects_to_their_operations(api: Api) -> None:
    paths = (await _document(api))["paths"]
    created = paths["/v1/contacts"]["post"]["responses"]["201"]["links"]
    assert created["get_contact"] == {
        "operationId": "get_contact",
        "parameters": {"path.id": "$response.body#/contact/id"},
    }
    enrolled = paths["/v1/sequences/{id}/enrollments"]["post"]["responses"]
    assert any(
        link["operationId"] == "get_enrollment"
        for response in enrolled.values()
        for link in response.get("links", {}).values()
    )
    events = paths["/v1/events"]["get"]["responses"]["200"]["links"]
    assert events["get_event"]["parameters"] == {"path.id": "$response.body#/data/0/id"}
    assert "get_endpoint" in paths["/v1/webhook-endpoints"]["post"]["responses"]["201"]["links"]


async def test_integral_numbers_are_integers(api: Api) -> None:
    """JSON does not tell 60 from 60.0; JSON Schema's integer accepts both, so seqd does."""
    steps = [{"kind": "sms", "body": "hi", "wait_minutes": 60.0}]
    status, body = await api.call("POST", "/sequences", {"name": "S", "steps": steps})
    assert status == 201, body
    assert body["sequence"]["steps"][0]["wait_minutes"] == 60  # type: ignore[index]
    # An optional integer too (msgspec says "Expected `int | null`").
    sender = {"channel": "sms", "address": "+14155550100", "limits": {"per_second": 5.0}}
    status, body = await api.call("POST", "/senders", sender)
    assert status == 201, body
    assert body["sender"]["limits"]["per_second"] == 5  # type: ignore[index]
    steps[0]["wait_minutes"] = 60.5
    status, body = await api.call("POST", "/sequences", {"name": "S", "steps": steps})
    assert status == 422 and body["errors"][0]["path"] == "steps[0].wait_minutes"  # type: ignore[index]
