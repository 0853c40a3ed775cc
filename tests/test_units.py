"""Pure functions: ids, templates, SMS segments, time format, phone/email normalisation."""

from __future__ import annotations

import pytest

from seqd import ids, models, templates
from seqd.sms import segments
from seqd.times import from_rfc3339, to_rfc3339


def test_ids_sort_by_time_and_name_their_shard() -> None:
    a = ids.new(ids.CONTACT, now_ms=1_000)
    b = ids.new(ids.CONTACT, now_ms=2_000)
    assert a < b and ids.is_valid(a, ids.CONTACT) and not ids.is_valid(a, ids.SEQUENCE)
    assert ids.time_of(b) == 2_000
    for shards in (1, 7, 16, 1024):
        for shard in range(min(shards, 20)):
            eid = ids.new_in_shard(ids.ENROLLMENT, shard, shards)
            assert ids.is_valid(eid, ids.ENROLLMENT) and ids.shard_of(eid, shards) == shard
    for bad in ("con_", "con_!!!!!!!!!!!!!!!!!!!!!!", "con_01M87ZG1G13N6E3KRCQQ6", "x", ""):
        assert not ids.is_valid(bad, ids.CONTACT)


def test_ids_random_parts_round_trip_and_do_not_repeat() -> None:
    for value in (0, 1, 2**ids.RANDOM_BITS - 1, 0x0ABCDEF012345678, 0x5555555555555):
        text = ids.new(ids.EVENT, now_ms=5, random_part=value)
        assert text.endswith(ids._encode(value, ids.RANDOM_CHARS))
        assert ids._decode(text[-ids.RANDOM_CHARS :]) == value
    # Many more than one block of OS randomness, all in one millisecond: no repeats.
    made = {ids.new(ids.ENROLLMENT, now_ms=7) for _ in range(5_000)}
    assert len(made) == 5_000


def test_ids_made_many_at_once_are_as_new_in_shard_makes_them() -> None:
    for shards, shard in ((1, 0), (7, 6), (16, 3), (1024, 1023)):
        made = ids.many_in_shard(ids.ENROLLMENT, shard, shards, 3_000, 1_234)
        assert len(set(made)) == 3_000
        assert {ids.shard_of(e, shards) for e in made} == {shard}
        assert {ids.time_of(e) for e in made} == {1_234}
        assert all(ids.is_valid(e, ids.ENROLLMENT) for e in made)
        one = ids.new_in_shard(ids.ENROLLMENT, shard, shards, 1_234)
        assert one[: 4 + ids.TIME_CHARS] == made[0][: 4 + ids.TIME_CHARS]
    assert ids.many_in_shard(ids.ENROLLMENT, 0, 4, 0, 1) == []


def test_a_forked_child_makes_other_ids_than_its_parent() -> None:
    import os

    ids.new(ids.CONTACT)  # a block of randomness is in hand
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, " ".join(ids.new(ids.CONTACT, now_ms=9) for _ in range(50)).encode())
        os._exit(0)
    os.close(write)
    child = set(os.read(read, 1 << 16).decode().split())
    os.waitpid(pid, 0)
    parent = {ids.new(ids.CONTACT, now_ms=9) for _ in range(50)}
    assert len(child) == 50 and not child & parent


def test_render_variables_fallbacks_and_missing() -> None:
    ctx = {
        "first_name": "Ada",
        "attributes": {"company": "Acme", "n": 3.0, "vip": True},
        "metadata": {"source": "call"},
        "last_name": "",
    }
    text = "Hi {{first_name}} of {{ attributes.company }} ({{metadata.source}}) {{attributes.n}}"
    assert templates.render(text, ctx) == "Hi Ada of Acme (call) 3"
    assert templates.render("{{attributes.vip}}", ctx) == "true"
    assert templates.render("Hi {{last_name|there}}", ctx) == "Hi there"
    assert templates.render("Hi {{email | friend}}!", ctx) == "Hi friend!"
    with pytest.raises(templates.MissingVariable) as info:
        templates.render("Hi {{attributes.missing}}", ctx)
    assert info.value.variable == "attributes.missing"


@pytest.mark.parametrize(
    "bad",
    [
        "{{",
        "}}",
        "{{ }}",
        "{{nope}}",
        "{{attributes}}",
        "{{first_name.x}}",
        "a {{b c}}",
        "{{first_name}} }}",
    ],
)
def test_template_syntax_errors(bad: str) -> None:
    with pytest.raises(templates.TemplateError):
        templates.parse(bad)


def test_sms_segments() -> None:
    assert segments("a" * 160) == (1, "gsm7")
    assert segments("a" * 161) == (2, "gsm7")
    assert segments("[" * 80) == (1, "gsm7")  # extension characters count twice
    assert segments("[" * 81) == (2, "gsm7")
    assert segments("é" * 10) == (1, "gsm7")
    assert segments("ç" * 70) == (1, "ucs2")
    assert segments("ç" * 71) == (2, "ucs2")
    assert segments("😀" * 35) == (1, "ucs2")  # surrogate pairs count two units
    assert segments("😀" * 36) == (2, "ucs2")


def test_rfc3339_round_trip() -> None:
    assert to_rfc3339(1_777_339_800_000) == "2026-04-28T01:30:00.000Z"
    # Seconds are formatted once and reused: the milliseconds still change across them.
    assert to_rfc3339(1_777_339_800_999) == "2026-04-28T01:30:00.999Z"
    assert to_rfc3339(1_777_339_801_007) == "2026-04-28T01:30:01.007Z"
    assert to_rfc3339(-1) == "1969-12-31T23:59:59.999Z"
    assert from_rfc3339("2026-04-28T01:30:00.000Z") == 1_777_339_800_000
    assert from_rfc3339("2026-04-28T03:30:00.000+02:00") == 1_777_339_800_000
    with pytest.raises(ValueError):
        from_rfc3339("2026-04-28T01:30:00")


def test_normalisers() -> None:
    assert models.normalize_phone("+44 20 7946 0958", None) == "+442079460958"
    assert models.normalize_phone("(415) 555-0100", "US") == "+14155550100"
    with pytest.raises(ValueError):
        models.normalize_phone("(415) 555-0100", None)
    assert models.normalize_email("Ada@EXAMPLE.com") == "Ada@example.com"
    with pytest.raises(ValueError):
        models.normalize_email("ada@")
