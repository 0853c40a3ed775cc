"""The shard mirror's text: what a claim reads of each contact, and the version."""

from __future__ import annotations

from seqd import models
from seqd.store import mirrors
from seqd.store.mirrors import CONTACT_READ
from tests.dispatchutil import email, sms


def steps(*given: models.StepIn) -> list[models.Step]:
    return models.build_steps(list(given))


def test_a_claim_reads_the_owner_the_addresses_and_what_the_templates_name() -> None:
    # SMS steps also read the contact's zone: quiet hours are kept in it.
    assert mirrors.contact_fields(steps(sms("Hello"))) == ("tenant", "phone", "timezone")
    assert mirrors.contact_fields(steps(sms("Hi {{first_name|there}}"))) == (
        "tenant",
        "first_name",
        "phone",
        "timezone",
    )
    # Under a schedule, every sequence reads what gives the zone.
    mail = steps(email("Hi", "Hello"))
    assert mirrors.contact_fields(mail) == ("tenant", "email")
    assert mirrors.contact_fields(mail, True) == ("tenant", "phone", "email", "timezone")
    both = steps(
        sms("{{attributes.company}}"),
        email("Re {{last_name}}", "{{metadata.source}} {{external_id}}"),
    )
    # metadata is the enrollment's, not the contact's; order is CONTACT_READ's.
    assert mirrors.contact_fields(both) == (
        "tenant",
        "last_name",
        "phone",
        "email",
        "timezone",
        "external_id",
        "attributes",
    )
    assert set(CONTACT_READ) >= set(mirrors.contact_fields(both))


def test_mirror_text_and_what_is_read_back_from_it() -> None:
    two = steps(sms("Hi {{first_name}}"), sms("x"))
    text = mirrors.mirror("active", 7, len(two))
    assert text == "active:7:2"
    assert mirrors.version_of(text) == 7
    assert mirrors.fields_text(two) == "tenant,first_name,phone,timezone"
    assert mirrors.fields_of("tenant,first_name,phone") == ("tenant", "first_name", "phone")
    # No fields answered for a sequence: every field a message can use.
    assert mirrors.fields_of(None) == mirrors.fields_of("") == CONTACT_READ
    for bad in ("", "active", "active:x:2", "active:1:2:a"):
        assert mirrors.version_of(bad) == -1
