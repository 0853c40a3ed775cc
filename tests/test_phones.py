"""The phone normaliser's shortcuts (seqd/phones.py) give exactly what the full
libphonenumber path gives, for every text they take: the same E.164 form, or the same
ValueError."""

from __future__ import annotations

import phonenumbers
from hypothesis import example, given
from hypothesis import strategies as st

from seqd import phones
from seqd.phones import normalize_phone
from tests.test_properties import PROFILE

REGIONS = st.sampled_from([None, "US", "CA", "GB", "FR", "DE", "IN", "BR", "JM", "ZZ"])


def reference(value: str, region: str | None) -> str:
    """The normaliser as it was before any shortcut: parse, check, format, and parse the
    result again to make sure the form is stable."""
    if phones._PHONE_JUNK.search(value):
        raise ValueError("junk")
    try:
        number = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException:
        raise ValueError("unparsable") from None
    if not phonenumbers.is_possible_number(number):
        raise ValueError("impossible")
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    try:
        again = phonenumbers.format_number(
            phonenumbers.parse(e164, None), phonenumbers.PhoneNumberFormat.E164
        )
    except phonenumbers.NumberParseException:
        again = None
    if again != e164:
        raise ValueError("unstable")
    return e164


def outcome(normalise: object, value: str, region: str | None) -> str | None:
    """The E.164 form, or None for a ValueError."""
    try:
        return normalise(value, region)  # type: ignore[operator, no-any-return]
    except ValueError:
        return None


_unicode_digits = "٠١٢٣٤٥٦٧٨٩０１２３４５６７８９"
_phoneish = st.one_of(
    st.from_regex(r"\+1[0-9]{8,12}", fullmatch=True),
    st.from_regex(r"\+1[2-9][0-9]{9}\n?", fullmatch=True),
    st.text(alphabet="+1234567890" + _unicode_digits, min_size=10, max_size=13).map(
        lambda s: "+1" + s
    ),
    st.from_regex(r"\+[1-9][0-9]{1,17}", fullmatch=True),
    st.text(alphabet="+0123456789 ()-.", max_size=20),
    st.text(max_size=20),
)


@PROFILE
@given(st.from_regex(r"\+1[2-9][0-9]{9}", fullmatch=True), REGIONS)
def test_canonical_north_american_numbers_are_their_own_normal_form(
    value: str, region: str | None
) -> None:
    """Every text the shortcut takes is returned unchanged by the full path."""
    assert phones._NANP_E164.fullmatch(value)
    assert reference(value, region) == value
    assert normalize_phone(value, region) == value


@PROFILE
@given(_phoneish, REGIONS)
@example("+12025550123", None)
@example("+11025550123", None)  # a national prefix where the area code goes
@example("+10025550123", "US")
@example("+1202555012", None)
@example("+120255501234", None)
@example("+1202555012٣", None)  # a non-ASCII digit: the full path reads it as 3
@example("+12025550123\n", None)
@example("+310000000", None)
def test_normalize_phone_agrees_with_the_full_path(value: str, region: str | None) -> None:
    expected = outcome(reference, value, region)
    assert outcome(normalize_phone, value, region) == expected
    # Asked again: now from the cache (or the shortcut), still the same.
    assert outcome(normalize_phone, value, region) == expected
    assert outcome(phones.full_normalize_phone, value, region) == expected


def test_every_area_code_takes_the_shortcut_exactly() -> None:
    for area in range(200, 1000):
        for rest in ("0000000", "2345678", "9999999"):
            value = f"+1{area}{rest}"
            assert phones._NANP_E164.fullmatch(value)
            assert reference(value, None) == value


def test_the_cache_is_bounded() -> None:
    assert phones._cached.cache_info().maxsize == phones.CACHE_SIZE
