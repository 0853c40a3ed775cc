"""Hostile bytes at the HTTP edge: each is a clear 4xx problem, never a 500."""

from __future__ import annotations

import asyncio
import base64

import pytest

from seqd.lifecycle import unsubscribe
from seqd.store.db import Store
from tests.conftest import Api
from tests.lifecycleutil import EMAIL, Client, client, config

SECRET = "unsubscribe-secret-0123456789"


async def raw_request(lc: Client, head: list[bytes], body: bytes = b"") -> tuple[int, bytes]:
    """Send bytes aiohttp's client would refuse to build; the status and the body."""
    server = lc.http.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    lines = [*head, b"Host: localhost", b"Connection: close"]
    if body:
        lines.append(b"Content-Length: " + str(len(body)).encode())
    try:
        writer.write(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        await writer.drain()
        answer = await reader.read()
    finally:
        writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


@pytest.mark.parametrize(
    "header",
    [
        b"Authorization: Bearer sk_live_\xff\xfe",
        b"X-Api-Key: \xc3\x28abc",
        b"Authorization: Bearer \xe2\x80\xa8",
    ],
)
async def test_a_non_utf8_api_key_is_401(store: Store, header: bytes) -> None:
    async with client(store) as lc:
        status, body = await raw_request(lc, [b"GET /v1/contacts HTTP/1.1", header])
    assert status == 401, body
    assert b"unauthorized" in body


async def test_a_non_utf8_twilio_signature_is_403(store: Store) -> None:
    form = b"From=%2B14155550100&To=%2B15005550001&Body=STOP&MessageSid=SM1"
    head = [
        b"POST /v1/inbound/twilio/sms HTTP/1.1",
        b"Content-Type: application/x-www-form-urlencoded",
        b"X-Twilio-Signature: \xff\xfeabc=",
    ]
    async with client(store) as lc:
        status, body = await raw_request(lc, head, form)
        assert (await lc.call("GET", "/suppressions"))[1]["total"] == 0
    assert status == 403, body


BROKEN_MULTIPART = {
    "no_boundary": (
        "multipart/form-data",
        b"--x\r\nContent-Disposition: form-data; name=a\r\n\r\n1\r\n--x--\r\n",
    ),
    "empty_boundary": ("multipart/form-data; boundary=", b"--\r\n\r\n"),
    "no_part": ("multipart/form-data; boundary=x", b"garbage without any boundary line"),
    "headers_never_end": ("multipart/form-data; boundary=x", b"--x\r\nContent-Disposition"),
    "no_closing_boundary": (
        "multipart/form-data; boundary=x",
        b"--x\r\nContent-Disposition: form-data; name=a\r\n\r\n1",
    ),
}


@pytest.mark.parametrize("broken", list(BROKEN_MULTIPART))
@pytest.mark.parametrize("route", ["sms", "status", "unsubscribe"])
async def test_a_broken_multipart_body_is_400(store: Store, route: str, broken: str) -> None:
    ctype, body = BROKEN_MULTIPART[broken]
    path = {
        "sms": "/v1/inbound/twilio/sms",
        "status": "/v1/inbound/twilio/status?e=enr_01M880EKDM4XR9YMTYSEEY&s=0",
        "unsubscribe": "/v1/unsubscribe/" + unsubscribe.sign(SECRET, "acme", "con_x", EMAIL),
    }[route]
    async with client(store, config(unsubscribe_secret=SECRET)) as lc:
        resp = await lc.http.post(path, data=body, headers={"Content-Type": ctype})
        answer = await resp.text()
    assert resp.status == 400, answer
    assert resp.content_type == "application/problem+json"


def _token(after: str) -> str:
    return base64.urlsafe_b64encode(f"1:{after}".encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "after",
    [
        f"{2**64}-0",
        f"0-{2**64}",
        f"{2**64 - 1}-{2**64 - 1}",
        "99999999999999999999-99999999999999999999",
    ],
)
async def test_a_forged_events_page_token_is_422(api: Api, after: str) -> None:
    code, body = await api.call("GET", f"/events?page_token={_token(after)}")
    assert code == 422, body
    assert body["errors"][0]["path"] == "query.page_token"  # type: ignore[index]


async def test_the_last_possible_stream_position_is_a_valid_page_token(api: Api) -> None:
    code, body = await api.call("GET", f"/events?page_token={_token(f'{2**64 - 1}-{2**64 - 2}')}")
    assert code == 200, body
    assert body["data"] == []  # type: ignore[index]


LINE_BREAKS = ["\r\n", "\n", "\r", "\x00", "\u2028", "\u2029", "\x85"]


@pytest.mark.parametrize("char", LINE_BREAKS)
@pytest.mark.parametrize("field", ["first_name", "last_name", "external_id", "attributes.company"])
async def test_a_contact_field_that_would_break_a_header_is_422(
    api: Api, field: str, char: str
) -> None:
    """The field may end up in a Subject header; refused when given, not when mailed."""
    value = f"Ada{char}Bcc: victim@example.com"
    name, _, attr = field.partition(".")
    fields = {name: {attr: value}} if attr else {name: value}
    code, body = await api.call("POST", "/contacts", {"email": "ada@example.com", **fields})
    assert code == 422, body
    assert [e["path"] for e in body["errors"]] == [field]  # type: ignore[index]
    code, created = await api.call("POST", "/contacts", {"email": "ada@example.com"})
    cid = created["contact"]["id"]  # type: ignore[index]
    code, body = await api.call("PATCH", f"/contacts/{cid}", fields)
    assert code == 422, body
    assert [e["path"] for e in body["errors"]] == [field]  # type: ignore[index]


@pytest.mark.parametrize(
    "phone", ["+1 (415) 555-0199x", "+1 415 555 0199 ext. 12", "+1-800-FLOWERS", "+14155550199;"]
)
async def test_trailing_junk_in_a_phone_is_422(api: Api, phone: str) -> None:
    code, body = await api.call("POST", "/contacts", {"phone": phone})
    assert code == 422, body
    assert [e["path"] for e in body["errors"]] == ["phone"]  # type: ignore[index]


async def test_a_phone_written_the_usual_ways_is_stored_in_e164(api: Api) -> None:
    given = ["+1 (415) 555-0191", "+1.415.555.0192", "+1 415/555-0193", "  +14155550194 "]
    for n, phone in enumerate(given, 1):
        code, body = await api.call("POST", "/contacts", {"phone": phone})
        assert code == 201, body
        assert body["contact"]["phone"] == f"+1415555019{n}"  # type: ignore[index]


@pytest.mark.parametrize("char", LINE_BREAKS)
async def test_a_subject_with_a_line_break_is_422(api: Api, char: str) -> None:
    """Every email of the step would fail at its Subject header; refused when written."""
    step = {"kind": "email", "subject": f"Hi{char}Bcc: victim@example.com", "body": "b"}
    code, body = await api.call(
        "POST", "/sequences", {"name": "s", "status": "active", "steps": [step]}
    )
    assert code == 422, body
    assert [e["path"] for e in body["errors"]] == ["steps[0].subject"]  # type: ignore[index]
