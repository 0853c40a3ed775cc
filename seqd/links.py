"""The links of a message body: found, numbered and rewritten the one way both click
tracking (seqd/clicks.py) and the SMS segment count of a tracked step (models) read."""

from __future__ import annotations

import re
from collections.abc import Callable

from seqd import ids
from seqd.tokens import MAC_CHARS

# An http(s) URL in text or in an HTML attribute; the punctuation that ends a sentence is
# not part of it.
_LINK = re.compile(r"""https?://[^\s<>"'`]+""")
_TRAILING = ".,;:!?)]}"
# What a tracked link's token takes besides its enrollment id, at most: step and link
# (2 digits each), the time (6 base-36 digits), four dots and the MAC.
_TOKEN_EXTRA = 2 + 2 + 6 + 4 + MAC_CHARS
# The base URL a tracked SMS step's segments are counted with ("https://sq.example.com/c"):
# the real one is known only to the running config.
COUNTED_BASE_CHARS = 24


def _spans(text: str) -> list[tuple[int, int]]:
    spans = []
    for m in _LINK.finditer(text):
        end = m.end()
        while end > m.start() and text[end - 1] in _TRAILING:
            end -= 1
        spans.append((m.start(), end))
    return spans


def nth_link(text: str, n: int) -> str | None:
    """Link number `n` (from 0) of `text`, as `rewrite` numbers them."""
    spans = _spans(text)
    if n >= len(spans):
        return None
    start, end = spans[n]
    return text[start:end]


def rewrite(text: str, tracked: Callable[[int], str]) -> str:
    """`text` with its link number n replaced by `tracked(n)`."""
    out: list[str] = []
    last = 0
    for n, (start, end) in enumerate(_spans(text)):
        out += (text[last:start], tracked(n))
        last = end
    out.append(text[last:])
    return "".join(out)


def placeholder_links(text: str, base_chars: int) -> str:
    """`text` with each link as long as its tracked link would be under a base URL of
    `base_chars` characters: what SMS segments are counted on."""
    size = base_chars + 1 + len(ids.new(ids.ENROLLMENT, 0)) + _TOKEN_EXTRA
    return rewrite(text, lambda n: "x" * size)
