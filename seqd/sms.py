"""SMS segment arithmetic (GSM 03.38 / UCS-2), as carriers bill it."""

from __future__ import annotations

from typing import Literal

_GSM_BASIC = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# Characters of the extension table: sent as an escape plus one septet.
_GSM_EXTENDED = set("^{}\\[~]|€\f")


def segments(text: str) -> tuple[int, Literal["gsm7", "ucs2"]]:
    """How many segments `text` takes, and the encoding a carrier will pick for it."""
    if all(c in _GSM_BASIC or c in _GSM_EXTENDED for c in text):
        units = sum(2 if c in _GSM_EXTENDED else 1 for c in text)
        return (1 if units <= 160 else -(-units // 153)), "gsm7"
    # UTF-16 code units: a character outside the BMP (most emoji) takes two.
    units = len(text.encode("utf-16-le")) // 2
    return (1 if units <= 70 else -(-units // 67)), "ucs2"
