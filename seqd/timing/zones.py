"""A recipient's time zone: the contact's, else its phone number's, else a default.

A number may map to several zones (US toll-free numbers, some mobile ranges): all of them
are candidates, and a moment is open only when it is open in every one (due.py).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal, NamedTuple

import phonenumbers
from holidays.countries.united_states import UnitedStates
from phonenumbers import geocoder
from phonenumbers import timezone as phone_timezone

from seqd.timing.local import zone

Source = Literal["contact", "phone", "default"]


class RecipientZone(NamedTuple):
    """Where a contact is: the zones a moment must be open in, the one shown as
    `timezone_used` (the first candidate), where it came from, the zone used when the
    candidates never agree (`fallback`), and the number's region for quiet hours
    ("US-FL", "US", "IN"; None without a phone)."""

    zones: tuple[str, ...]
    source: Source
    fallback: str
    region: str | None

    @property
    def used(self) -> str:
        return self.zones[0]


def valid_zone(name: str | None) -> bool:
    if not name:
        return False
    try:
        zone(name)
    except (KeyError, ValueError, OSError):  # ZoneInfoNotFoundError is a KeyError
        return False
    return True


# Facts of numbers by NANP exchange or, elsewhere, by number; cleared past this many.
FACTS_KEPT = 100_000
_facts: dict[str, tuple[tuple[str, ...], str | None]] = {}


def phone_key(phone: str) -> str:
    """What a number's zones and region depend on: a North American number's exchange
    (+1 NPA NXX, what the metadata is keyed by), else the whole number."""
    return phone[:-4] if len(phone) == 12 and phone.startswith("+1") else phone


def phone_facts(phone: str) -> tuple[tuple[str, ...], str | None]:
    """The zones (those zoneinfo knows) and the region of an E.164 number; ((), None) when
    it is not one. Looked up once per `phone_key`: parsing and the geocoder cost ~200 us a
    number, the dispatcher asks per step."""
    key = phone_key(phone)
    found = _facts.get(key)
    if found is None:
        if len(_facts) >= FACTS_KEPT:
            _facts.clear()
        found = _facts[key] = _lookup(phone)
    return found


def _lookup(phone: str) -> tuple[tuple[str, ...], str | None]:
    try:
        number = phonenumbers.parse(phone, None)
    except phonenumbers.NumberParseException:
        return (), None
    zones = tuple(z for z in phone_timezone.time_zones_for_number(number) if valid_zone(z))
    country = phonenumbers.region_code_for_number(number)
    if not country or country == "ZZ":
        return zones, None
    return zones, _subdivision(number, country)


def _subdivision(number: phonenumbers.PhoneNumber, country: str) -> str:
    """ "US-<state>" for a US number whose area code names a state, else the country."""
    if country != "US":
        return country
    place = geocoder.description_for_number(number, "en")
    codes = UnitedStates.subdivisions_aliases  # state name -> code, kept by the library
    state = place.rsplit(", ", 1)[-1] if ", " in place else codes.get(place)
    return f"US-{state}" if state in codes.values() else country


@lru_cache(maxsize=65_536)
def resolve(
    contact_zone: str | None, phone: str | None, default_zone: str | None, tenant_zone: str
) -> RecipientZone:
    """The recipient of a contact with `timezone` `contact_zone` and `phone`, under a
    schedule's `default_timezone` (or None) and the tenant's default zone."""
    fallback = default_zone if valid_zone(default_zone) else tenant_zone
    assert fallback is not None
    zones, region = phone_facts(phone) if phone else ((), None)
    if valid_zone(contact_zone):
        assert contact_zone is not None
        return RecipientZone((contact_zone,), "contact", fallback, region)
    if zones:
        return RecipientZone(zones, "phone", fallback, region)
    return RecipientZone((fallback,), "default", fallback, region)
