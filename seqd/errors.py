"""Domain exceptions. The API turns each into one problem+json response (api/errors.py)."""

from __future__ import annotations

import re
from typing import Any

import msgspec


class FieldError(msgspec.Struct, frozen=True):
    """One bad input: `path` in JSONPath-like form without the `$.` (`steps[0].body`)."""

    path: str
    message: str


_PATH = re.compile(r" - at (?:`key` in )?`\$(.*)`$")


def field_error(exc: msgspec.ValidationError, root: str = "") -> FieldError:
    """msgspec's "Expected `int`, got `str` - at `$.steps[0].wait_minutes`" as a FieldError."""
    message = str(exc)
    match = _PATH.search(message)
    path = match.group(1).lstrip(".") if match else ""
    reason = _PATH.sub("", message)
    missing = re.match(r"Object missing required field `([^`]+)`", reason)
    unknown = re.match(r"Object contains unknown field `([^`]+)`", reason)
    if missing or unknown:
        name = (missing or unknown).group(1)  # type: ignore[union-attr]
        path = f"{path}.{name}" if path else name
        reason = "required" if missing else "unknown field"
    if root:
        path = f"{root}.{path}" if path else root
    return FieldError(path or "body", reason)


class SeqdError(Exception):
    status = 500
    code = "internal_error"
    title = "Internal error"

    def __init__(self, detail: str = "", **extra: Any) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.extra = extra


class BadRequest(SeqdError):
    status, code, title = 400, "bad_request", "Malformed request"


class Unauthorized(SeqdError):
    status, code, title = 401, "unauthorized", "Missing or invalid API key"


class Forbidden(SeqdError):
    status, code, title = 403, "forbidden", "Forbidden"


class NotFound(SeqdError):
    status, code, title = 404, "not_found", "Not found"


class Conflict(SeqdError):
    status, code, title = 409, "conflict", "Conflict"


class UnsupportedMediaType(SeqdError):
    status, code, title = 415, "unsupported_media_type", "Unsupported media type"


class Invalid(SeqdError):
    status, code, title = 422, "validation_error", "Invalid request"

    def __init__(self, errors: list[FieldError], detail: str = "") -> None:
        super().__init__(detail or "; ".join(f"{e.path}: {e.message}" for e in errors))
        self.errors = errors

    @classmethod
    def field(cls, path: str, message: str) -> Invalid:
        return cls([FieldError(path, message)])
