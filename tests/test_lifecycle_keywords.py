"""SMS keywords: every default opt-out, opt-in and help word, and what is not one."""

from __future__ import annotations

import pytest

from seqd.config import LifecycleConfig
from seqd.lifecycle.keywords import classify

CONFIG = LifecycleConfig()
OPT_OUT = [
    "STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT",
    "opt out", "stop all", "please stop",
]  # fmt: skip


@pytest.mark.parametrize("word", OPT_OUT)
def test_opt_out_keywords(word: str) -> None:
    for text in (word, word.lower(), word.upper(), word.title(), f"  {word}\n"):
        assert classify(text, CONFIG) == "opt_out", text


@pytest.mark.parametrize("word", ["START", "UNSTOP", "YES", "start", " Yes "])
def test_opt_in_keywords(word: str) -> None:
    assert classify(word, CONFIG) == "opt_in"


@pytest.mark.parametrize("word", ["HELP", "help", "Info"])
def test_help_keywords(word: str) -> None:
    assert classify(word, CONFIG) == "help"


@pytest.mark.parametrize(
    "text",
    ["", "   ", "stop it", "please stop texting me", "STOP.", "yes please", "Stopp", "opt-out"],
)
def test_not_keywords(text: str) -> None:
    assert classify(text, CONFIG) is None


def test_inner_whitespace_collapses() -> None:
    assert classify("opt    out", CONFIG) == "opt_out"
    assert classify("Please\tSTOP", CONFIG) == "opt_out"


def test_list_is_configurable() -> None:
    custom = LifecycleConfig(opt_out_keywords=["ARRÊT", "basta"], opt_in_keywords=["GO"])
    assert classify("arrêt", custom) == "opt_out"
    assert classify("BASTA", custom) == "opt_out"
    assert classify("STOP", custom) is None
    assert classify("go", custom) == "opt_in"
