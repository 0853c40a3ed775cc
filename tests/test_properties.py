"""Property tests (Hypothesis): the template renderer, the phone/email normalisers and the
SMS keyword classifier never fail in a way their callers do not handle."""

from __future__ import annotations

import os
import re

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from seqd.config import LifecycleConfig
from seqd.lifecycle.keywords import classify, normalise
from seqd.models import normalize_email, normalize_phone
from seqd.templates import CONTACT_FIELDS, MissingVariable, TemplateError, parse, render

# Enough to find the boundary cases; the whole file stays within a few seconds.
# SEQD_PROPERTY_EXAMPLES raises it for a longer hunt.
EXAMPLES = int(os.environ.get("SEQD_PROPERTY_EXAMPLES", "300"))
# CI runs the same examples every time (a red run is reproducible, never luck);
# SEQD_FUZZ_RANDOM=1 draws new ones for a hunt.
RANDOM = os.environ.get("SEQD_FUZZ_RANDOM") == "1"
PROFILE = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=not RANDOM,
    database=None,
)

_name = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)
_key = st.from_regex(r"[A-Za-z0-9_-]{1,8}", fullmatch=True)
_variable = st.one_of(
    st.sampled_from(sorted(CONTACT_FIELDS)).map(lambda f: (f,)),
    st.tuples(st.sampled_from(["attributes", "metadata"]), _key),
)
# Literal text without braces, so the template's structure is the generated one.
_literal = st.text(st.characters(blacklist_characters="{}"), max_size=12)
_fallback = st.one_of(st.none(), st.text(st.characters(blacklist_characters="{}|"), max_size=8))


@st.composite
def templates(draw: st.DrawFn) -> tuple[str, list[tuple[tuple[str, ...], str | None]]]:
    parts, variables = [], []
    for _ in range(draw(st.integers(0, 5))):
        parts.append(draw(_literal))
        path, fallback = draw(_variable), draw(_fallback)
        spacing = draw(st.sampled_from(["", " ", "  "]))
        inner = spacing + ".".join(path) + spacing
        if fallback is not None:
            inner += "|" + fallback
        parts.append("{{" + inner + "}}")
        variables.append((path, fallback))
    parts.append(draw(_literal))
    return "".join(parts), variables


def _context(variables: list[tuple[tuple[str, ...], str | None]], value: str) -> dict[str, object]:
    context: dict[str, object] = {"attributes": {}, "metadata": {}}
    for path, _ in variables:
        if len(path) == 1:
            context[path[0]] = value
        else:
            context[path[0]][path[1]] = value  # type: ignore[index]
    return context


@PROFILE
@given(st.text(max_size=60))
@example("{{")
@example("}}{{first_name}}")
@example("{{first_name}")
@example("{{ | }}")
@example("{{attributes.}}")
@example("{{{first_name}}}")
def test_parse_raises_only_template_error(text: str) -> None:
    try:
        parse(text)
    except TemplateError:
        pass


@PROFILE
@given(st.text(alphabet="{}|. abx_", max_size=30))
def test_parse_of_brace_soup_raises_only_template_error(text: str) -> None:
    try:
        parse(text)
    except TemplateError:
        pass


@PROFILE
@given(templates(), st.text(st.characters(blacklist_characters="{}"), min_size=1, max_size=10))
def test_render_with_a_full_context_fills_every_variable(
    template: tuple[str, list[tuple[tuple[str, ...], str | None]]], value: str
) -> None:
    text, variables = template
    out = render(text, _context(variables, value))
    assert "{{" not in out and "}}" not in out
    assert out.count(value) >= len(variables)


@PROFILE
@given(templates())
def test_render_without_values_uses_fallbacks_or_names_the_missing_variable(
    template: tuple[str, list[tuple[tuple[str, ...], str | None]]],
) -> None:
    text, variables = template
    first_missing = next((".".join(p) for p, fallback in variables if fallback is None), None)
    try:
        out = render(text, {"attributes": {}, "metadata": {}})
    except MissingVariable as exc:
        assert exc.variable == first_missing
    else:
        assert first_missing is None
        assert "{{" not in out
        for _, fallback in variables:
            assert fallback is not None and fallback.strip() in out


@PROFILE
@given(templates())
def test_empty_values_count_as_missing(
    template: tuple[str, list[tuple[tuple[str, ...], str | None]]],
) -> None:
    """An empty string is no value: the fallback is used, never an empty hole."""
    text, variables = template
    try:
        out = render(text, _context(variables, ""))
    except MissingVariable:
        assert any(fallback is None for _, fallback in variables)
    else:
        assert all(fallback is not None for _, fallback in variables)
        assert "{{" not in out


_phoneish = st.one_of(
    st.text(max_size=25),
    st.text(alphabet="+0123456789 ()-.", max_size=20),
    st.from_regex(r"\+[1-9][0-9]{6,14}", fullmatch=True),
    st.from_regex(r"\(?[2-9][0-9]{2}\)? ?[2-9][0-9]{2}-[0-9]{4}", fullmatch=True),
)


@PROFILE
@given(_phoneish, st.sampled_from([None, "US", "GB", "FR", "DE", "ZZ"]))
@example("+1 415 555 2671", None)
@example("0044 20 7946 0958", "GB")
@example("+" + "9" * 300, None)
@example("+310000000", None)  # found by this test: was +31000000, then +3100000
def test_normalize_phone_raises_only_value_error_and_is_idempotent(
    value: str, region: str | None
) -> None:
    try:
        once = normalize_phone(value, region)
    except ValueError:
        return
    assert re.fullmatch(r"\+[1-9][0-9]{1,17}", once), once
    assert normalize_phone(once, region) == once
    # E.164 carries its country: the region no longer matters.
    assert normalize_phone(once, None) == once


_emailish = st.one_of(
    st.text(max_size=40),
    st.emails(),
    st.builds(
        lambda local, domain: f"{local}@{domain}",
        st.text(st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=12),
        st.sampled_from(["Example.COM", "exämple.de", "xn--exmple-cua.de", "a..b", "[127.0.0.1]"]),
    ),
)


@PROFILE
@given(_emailish)
@example("Alice@EXAMPLE.com")
@example("üser@exämple.de")
@example("a@b")
@example("\x00@example.com")
def test_normalize_email_raises_only_value_error_and_is_idempotent(value: str) -> None:
    try:
        once = normalize_email(value)
    except ValueError:
        return
    assert normalize_email(once) == once
    assert once.rsplit("@", 1)[1] == once.rsplit("@", 1)[1].lower()


CONFIG = LifecycleConfig()
_keywords = (
    [("opt_out", w) for w in CONFIG.opt_out_keywords]
    + [("opt_in", w) for w in CONFIG.opt_in_keywords]
    + [("help", w) for w in CONFIG.help_keywords]
)
_space = st.text(alphabet=" \t\r\n\u00a0\u2003", max_size=3)


def _case_mix(word: str, flips: list[bool]) -> str:
    padded = flips + [False] * len(word)
    return "".join(c.upper() if f else c.lower() for c, f in zip(word, padded, strict=False))


@PROFILE
@given(st.sampled_from(_keywords), st.lists(st.booleans(), max_size=12), _space, _space)
def test_keywords_ignore_case_and_surrounding_whitespace(
    keyword: tuple[str, str], flips: list[bool], before: str, after: str
) -> None:
    kind, word = keyword
    text = before + _case_mix(word, flips) + after
    assert classify(text, CONFIG) == kind


@PROFILE
@given(st.sampled_from(_keywords), st.text(min_size=1, max_size=10), st.booleans())
def test_keywords_match_only_the_whole_text(
    keyword: tuple[str, str], extra: str, in_front: bool
) -> None:
    _, word = keyword
    text = extra + " " + word if in_front else word + " " + extra
    if normalise(text) in {normalise(w) for _, w in _keywords}:
        return  # the extra text made another keyword ("STOP ALL" is itself one)
    assert classify(text, CONFIG) is None


@PROFILE
@given(st.text(max_size=40))
def test_classify_never_raises_and_agrees_with_normalise(text: str) -> None:
    kind = classify(text, CONFIG)
    if kind is not None:
        assert normalise(text) in {normalise(w) for k, w in _keywords if k == kind}
