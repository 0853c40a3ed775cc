"""The shard mirror's text: what a claim reads of each contact, and the version."""

from __future__ import annotations

from seqd import models
from seqd.store import mirrors
from seqd.store.mirrors import CONTACT_READ
from tests.dispatchutil import email, sms


def steps(*given: models.StepIn) -> list[models.Step]:
    return models.build_steps(list(given))


def test_a_claim_reads_the_owner_the_addresses_and_what_the_templates_name() -> None:
    assert mirrors.contact_fields(steps(sms("Hello"))) == ("tenant", "phone")
    assert mirrors.contact_fields(steps(sms("Hi {{first_name|there}}"))) == (
        "tenant",
        "first_name",
        "phone",
    )
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
        "external_id",
        "attributes",
    )
    assert set(CONTACT_READ) >= set(mirrors.contact_fields(both))


def test_mirror_text_and_what_is_read_back_from_it() -> None:
    text = mirrors.mirror("active", 7, steps(sms("Hi {{first_name}}"), sms("x")))
    assert text == "active:7:2:tenant,first_name,phone"
    assert mirrors.version_of(text) == 7
    assert mirrors.fields_of(text) == ("tenant", "first_name", "phone")
    # Written before mirrors named their fields: every field a message can use.
    assert mirrors.version_of("paused:3:2") == 3
    assert mirrors.fields_of("paused:3:2") == CONTACT_READ
    for bad in ("", "active", "active:x:2", "active:1:2:a:b"):
        assert mirrors.version_of(bad) == -1
