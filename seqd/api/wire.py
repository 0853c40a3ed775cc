"""Request bodies and query strings in, JSON out, with msgspec at the edge.

Decoding errors become `Invalid` (422) with the path of the bad field, or `BadRequest`
(400) for JSON that does not parse.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec
from aiohttp import web
from aiohttp.helpers import parse_mimetype
from aiohttp.http_exceptions import HttpProcessingError

from seqd.errors import BadRequest, FieldError, Invalid, UnsupportedMediaType, field_error

T = TypeVar("T")
_encoder = msgspec.json.Encoder()


# "Expected `int`, got `float`", and the same of an optional int ("`int | null`").
_INT_GOT_FLOAT = re.compile(r"Expected `int( \| [^`]+)?`, got `float`")


def _integral(value: Any) -> Any:
    """`value` with every whole float an int."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral(v) for v in value]
    return value


async def read_body(request: web.Request, kind: type[T]) -> T:
    if request.content_type not in ("application/json", "application/octet-stream", ""):
        if not request.content_type.endswith("+json"):
            raise UnsupportedMediaType(f"send application/json, not {request.content_type}")
    raw = await request.read()
    if not raw.strip():
        raw = b"{}"
    try:
        return msgspec.json.decode(raw, type=kind)
    except msgspec.ValidationError as exc:
        if not _INT_GOT_FLOAT.search(str(exc)):
            raise Invalid([field_error(exc)]) from None
        # JSON does not tell 60 from 60.0 (JSON Schema's integer takes both); msgspec does.
        try:
            return msgspec.convert(_integral(msgspec.json.decode(raw)), kind)
        except msgspec.ValidationError as again:
            raise Invalid([field_error(again)]) from None
    except msgspec.DecodeError as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from None
    except RecursionError:
        # msgspec's decoder stops at its nesting limit (about 1000 levels) this way.
        raise BadRequest("body is not valid JSON: nested too deeply") from None


async def read_form(request: web.Request) -> list[tuple[str, str]]:
    """A form's text fields, urlencoded or multipart; a form that does not parse (a
    multipart body without its boundary, cut short, with a nameless part) is a 400."""
    if request.content_type.startswith("multipart/"):
        boundary = parse_mimetype(request.headers.get("Content-Type", "")).parameters.get(
            "boundary"
        )
        if not boundary:
            raise BadRequest("a multipart body needs a boundary parameter in its Content-Type")
    try:
        form = await request.post()
    except ValueError as exc:  # aiohttp's multipart reader: a malformed body
        raise BadRequest(f"the form does not parse: {exc}") from None
    except HttpProcessingError as exc:  # a part's headers do not parse
        raise BadRequest(f"the form does not parse: {exc.message}") from None
    return [(k, v) for k, v in form.items() if isinstance(v, str)]


def read_query(request: web.Request, kind: type[T]) -> T:
    values: dict[str, Any] = {}
    for key in request.query:
        found = request.query.getall(key)
        values[key] = found[0] if len(found) == 1 else found
    try:
        return msgspec.convert(values, kind, strict=False)
    except msgspec.ValidationError as exc:
        err = field_error(exc)
        raise Invalid([FieldError(f"query.{err.path}", err.message)]) from None


def respond(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=_encoder.encode(value),
        status=status,
        content_type="application/json",
        headers=headers,
    )
