"""What counts as a secret, in one place: used by the log processor and `check-config`.

A value is hidden when its name says it is a secret (`auth_token`, `password`,
`header_value`, `authorization`, …) and, whatever its name, a password inside a URL
(`redis://user:pw@host`) or a secret-looking query parameter (`?token=…`) is masked.
Message bodies are not secrets but must not reach logs either; `log_processor` hides them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, MutableMapping
from functools import lru_cache
from itertools import pairwise
from typing import Any

MASK = "***"

# Matched against a name split at `_`, `-` and `.`: "auth_token", "X-Api-Key", "smtp.password".
_SECRET_WORDS = frozenset(
    {
        "authorization",
        "secret",
        "secrets",
        "token",
        "password",
        "passwd",
        "cookie",
        "credential",
        "credentials",
        "apikey",
    }
)
# Multi-word names whose single words are harmless alone ("header", "api", "key").
_SECRET_PAIRS = frozenset({("api", "key"), ("header", "value"), ("private", "key")})
# Not secrets, but message content that stays out of logs.
_CONTENT_WORDS = frozenset({"body", "subject"})

_SPLIT = re.compile(r"[_.\-\s]+")
_URL_PASSWORD = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^/@:\s]*):[^/@\s]+@")
_QUERY_SECRET = re.compile(
    r"([?&](?:[a-z_]*token|[a-z_]*secret|api_?key|key|password|sig|signature)=)[^&#\s]+",
    re.IGNORECASE,
)


def _words(name: str) -> list[str]:
    return [w for w in _SPLIT.split(name.lower()) if w]


@lru_cache(maxsize=4096)
def is_secret_name(name: str) -> bool:
    """True for setting, header and log field names that hold credentials."""
    words = _words(name)
    if any(w in _SECRET_WORDS for w in words):
        return True
    return any(pair in _SECRET_PAIRS for pair in pairwise(words))


@lru_cache(maxsize=4096)
def is_content_name(name: str) -> bool:
    return any(w in _CONTENT_WORDS for w in _words(name))


def mask_url(text: str) -> str:
    """`scheme://user:pw@host/?token=x` -> `scheme://user:***@host/?token=***`."""
    if "://" not in text and "=" not in text:
        return text
    return _QUERY_SECRET.sub(rf"\1{MASK}", _URL_PASSWORD.sub(rf"\1:{MASK}@", text))


def mask_tree(value: Any, *, content: bool = False) -> Any:
    """A copy of plain data (dicts, lists, strings) with secrets masked.

    `content=True` also hides message content (bodies, subjects): what logs need.
    """
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            name = str(key)
            hidden = is_secret_name(name) or (content and is_content_name(name))
            out[key] = (
                MASK if hidden and item not in (None, "") else mask_tree(item, content=content)
            )
        return out
    if isinstance(value, list | tuple):
        return type(value)(mask_tree(v, content=content) for v in value)
    if isinstance(value, str):
        return mask_url(value)
    return value


@lru_cache(maxsize=4096)
def _hidden_in_logs(name: str) -> bool:
    return is_secret_name(name) or is_content_name(name)


def log_processor(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: no credential or message content leaves the process in a log line.

    On every line (the access log's included), so the common case is kept cheap: names are
    classified once (cached), and a string without "://" or "=" is returned as it is.
    """
    for key, value in event_dict.items():
        if key == "event":
            # A library's formatted message may carry a URL with its password.
            if isinstance(value, str):
                event_dict[key] = mask_url(value)
            continue
        if _hidden_in_logs(key):
            if value not in (None, ""):
                event_dict[key] = MASK
        elif isinstance(value, str):
            event_dict[key] = mask_url(value)
        elif isinstance(value, dict | list | tuple | Mapping):
            event_dict[key] = mask_tree(value, content=True)
    return event_dict
