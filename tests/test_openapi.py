"""The served OpenAPI document: valid 3.1, and every route of the app is in it."""

from __future__ import annotations

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
    served = {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
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
