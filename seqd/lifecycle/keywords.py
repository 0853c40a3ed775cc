"""SMS keywords: the whole text of a message decides whether it is an opt-out, an opt-in
or a request for help; anything else is a reply."""

from __future__ import annotations

from typing import Literal

from seqd.config import LifecycleConfig

Keyword = Literal["opt_out", "opt_in", "help"]


def normalise(text: str) -> str:
    """Trimmed, case-folded, inner runs of whitespace collapsed: "  Opt   OUT " -> "opt out"."""
    return " ".join(text.split()).casefold()


def classify(text: str, config: LifecycleConfig) -> Keyword | None:
    word = normalise(text)
    if not word:
        return None
    for kind, words in (
        ("opt_out", config.opt_out_keywords),
        ("opt_in", config.opt_in_keywords),
        ("help", config.help_keywords),
    ):
        if any(normalise(w) == word for w in words):
            return kind  # type: ignore[return-value]
    return None
