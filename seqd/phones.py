"""Phone numbers in their one stored form, E.164: what lookups, suppressions and senders
compare.

`normalize_phone` is on the path of every inline contact, so it avoids libphonenumber's
full parse where an exact cheaper answer exists: a North American number already written
in canonical E.164 is its own normal form, and any other answer is remembered for the
next time the same text comes (a bounded cache). `full_normalize_phone` is the reference
both must agree with (tests/test_phones.py checks the shortcut against it).
"""

from __future__ import annotations

import re
from functools import lru_cache

import phonenumbers

# What a phone may hold besides digits: spaces, + . - / ( ).
_PHONE_JUNK = re.compile(r"[^\d\s+.\-/()]")
# +1, then an area code and 7 digits, ASCII only. libphonenumber reads country code 1 with
# the US metadata: a 10-digit national number is possible, and one not starting with the
# national prefix "1" has nothing stripped, so it formats back to the same text.
_NANP_E164 = re.compile(r"\+1[2-9][0-9]{9}", re.ASCII)
# Texts whose answer is remembered: about 100 B each, so at most a few MB.
CACHE_SIZE = 32768


def full_normalize_phone(value: str, region: str | None) -> str:
    """E.164 form of `value`; ValueError with the reason when it is not a phone number.

    Only digits and the usual separators are read: libphonenumber would drop a trailing
    `x` or `ext. 12` as an extension and spell out letters, so `+1 (415) 555-0199x` would
    be stored as another number than the one written."""
    junk = _PHONE_JUNK.search(value)
    if junk is not None:
        raise ValueError(f"not a phone number (unexpected {junk.group()!r})")
    try:
        number = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException as exc:
        raise ValueError(f"not a phone number ({exc._msg})") from None
    if not phonenumbers.is_possible_number(number):
        raise ValueError("not a possible phone number (wrong length for its country)")
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    if e164 == value:
        # Parsing a text that starts with + ignores the region, so parsing `e164` again
        # would give the same number: the form is stable.
        return e164
    # Some impossible-in-practice numbers lose a digit each time round (+310000000 ->
    # +31000000 -> +3100000: a national prefix read again); one stored form must map to
    # itself, or lookups and suppressions would miss it (tests/test_properties.py).
    try:
        again = phonenumbers.format_number(
            phonenumbers.parse(e164, None), phonenumbers.PhoneNumberFormat.E164
        )
    except phonenumbers.NumberParseException:
        again = None
    if again != e164:
        raise ValueError("not a phone number (no stable E.164 form)")
    return e164


_cached = lru_cache(maxsize=CACHE_SIZE)(full_normalize_phone)


def normalize_phone(value: str, region: str | None) -> str:
    """`full_normalize_phone(value, region)`, without its parse where that is exact."""
    if _NANP_E164.fullmatch(value):
        return value
    return _cached(value, region)
