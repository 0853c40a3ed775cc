"""Bar charts as numbers for an inline SVG: no script, no library, drawn by the template."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

HEIGHT = 120


class Bar(msgspec.Struct, frozen=True):
    label: str
    value: int
    x: int
    width: int
    height: int  # px, of HEIGHT
    rate: str = ""  # e.g. "42%" of the first bar, for funnels


def bars(points: Sequence[tuple[str, int]], width: int = 24, funnel: bool = False) -> list[Bar]:
    """Bars scaled to the largest value; with `funnel`, each also shows its share of the
    first (a step funnel: scheduled, sent, delivered, replied...)."""
    top = max((v for _, v in points), default=0) or 1
    first = points[0][1] if points else 0
    out = []
    for n, (label, value) in enumerate(points):
        rate = f"{100 * value / first:.0f}%" if funnel and first else ""
        out.append(Bar(label, value, n * (width + 4), width, round(HEIGHT * value / top), rate))
    return out
