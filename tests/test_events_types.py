"""Event shapes, derived ids, subscriptions, signing and the SSRF address rules (no store)."""

from __future__ import annotations

import json

import msgspec
import pytest
from standardwebhooks.webhooks import Webhook

from seqd import event_ids, event_names, ids
from seqd.events import envelope, signing, ssrf
from seqd.store import event_types
from seqd.store.events import read_logged
from seqd.store.outbox import Entry
from seqd.times import to_rfc3339

AT = 1_800_000_000_000
FIELDS = {
    "t": "acme",
    "s": "seq_1",
    "c": "con_1",
    "st": "paused",
    "i": "1",
    "n": str(AT),
    "ua": str(AT),
    "pr": "manual",
    "k": "3",
    "a": "0",
    "p0": "SM1",
}


def _entry(etype: str, data: object, *, shard: int = 1, entry: str = f"{AT}-0") -> Entry:
    fields = {"type": etype, "tenant": "acme", "at": str(AT), "data": json.dumps(data)}
    return Entry(shard, entry, fields)


def test_enrollment_event_data_is_the_enrollment() -> None:
    eid = ids.new_in_shard(ids.ENROLLMENT, 1, 4)
    raw = {"id": eid, "fields": FIELDS, "paused_reason": "manual"}
    data = event_types.shape("sequence.enrollment.paused", raw)
    assert data["id"] == eid and data["status"] == "paused" and data["paused_reason"] == "manual"
    assert data["sequence_id"] == "seq_1" and data["contact_id"] == "con_1"
    assert data["next_run_at"] is None and data["updated_at"] == to_rfc3339(AT)
    assert data["enrolled_at"] == to_rfc3339(ids.time_of(eid))  # the id's time: not stored
    assert "fields" not in data and "t" not in data
    assert event_types.refs(raw) == (eid, "con_1")


def test_step_event_nests_the_enrollment_and_converts_times() -> None:
    eid = ids.new_in_shard(ids.ENROLLMENT, 1, 4)
    raw = {
        "id": eid,
        "fields": {**FIELDS, "st": "active"},
        "step": 0,
        "kind": "sms",
        "provider_id": "SM1",
        "sent_at": AT,
    }
    data = event_types.shape("sequence.step.sent", raw)
    assert data["step"] == 0 and data["kind"] == "sms" and data["sent_at"] == to_rfc3339(AT)
    assert data["enrollment_id"] == eid and data["contact_id"] == "con_1"
    assert data["enrollment"]["status"] == "active"
    assert data["enrollment"]["next_run_at"] == to_rfc3339(AT)


def test_unknown_type_passes_through_with_generic_conversion() -> None:
    eid = ids.new_in_shard(ids.ENROLLMENT, 1, 4)
    enrollment_shaped = event_types.shape("sequence.something.new", {"id": eid, "fields": FIELDS})
    assert enrollment_shaped["enrollment"]["id"] == eid
    plain = event_types.shape("brand.new", {"a": 1, "seen_at": AT, "label_at": "x"})
    assert plain == {"a": 1, "seen_at": to_rfc3339(AT), "label_at": "x"}
    # Enrollment-looking data that cannot be read goes out as stored.
    broken = {"id": eid, "fields": {"st": "nonsense"}}
    assert event_types.shape("sequence.enrollment.created", broken) == broken


def test_contact_events_and_their_refs() -> None:
    assert event_types.shape("contact.deleted", {"id": "con_9"}) == {"id": "con_9"}
    assert event_types.refs({"id": "con_9"}) == ("", "con_9")
    assert event_types.refs({"contact_id": "con_2", "cancelled": ["enr_x"]}) == ("", "con_2")
    assert event_types.refs({"id": "enr_1", "enrollment_id": "enr_1", "contact_id": "con_3"}) == (
        "enr_1",
        "con_3",
    )


def test_a_contact_event_named_like_an_enrollment_is_filed_under_its_contact_only() -> None:
    # The caller names its own events: an id that happens to start with "enr_" is theirs.
    raw = {"id": "enr_theirs", "contact_id": "con_4", "name": "meeting_booked"}
    [event] = envelope.convert(_entry("contact.event_recorded", raw), 4)
    assert (event.enrollment_id, event.contact_id) == ("", "con_4")
    [step] = envelope.convert(_entry("sequence.step.sent", {**raw, "id": "enr_1"}), 4)
    assert step.enrollment_id == "enr_1"


def test_convert_never_raises_on_bad_entries() -> None:
    assert envelope.convert(Entry(0, f"{AT}-0", {"type": "x"}), 4) == []
    assert envelope.convert(Entry(0, f"{AT}-0", {"tenant": "acme"}), 4) == []
    [bad] = envelope.convert(Entry(0, f"{AT}-0", {"type": "x", "tenant": "a", "data": "{"}), 4)
    assert bad.event().data == {}
    [listed] = envelope.convert(_entry("x", [1, 2]), 4)
    assert listed.event().data == {}
    [no_time] = envelope.convert(Entry(2, f"{AT}-1", {"type": "x", "tenant": "a"}), 4)
    assert no_time.event().created_at == to_rfc3339(AT)
    # A batched entry that is not a JSON array has no event to give (logged, acknowledged);
    # an element that is not an object is an event with empty data.
    head = {"type": "x", "tenant": "a", "at": str(AT)}
    for items in ("[", "{}", "[" + ",".join(["{}"] * 4097) + "]"):
        assert envelope.convert(Entry(0, f"{AT}-0", head | {"items": items}), 4) == []
    [one, two] = envelope.convert(Entry(0, f"{AT}-0", head | {"items": '[3, {"a": 1}]'}), 4)
    assert one.event().data == {} and two.event().data == {"a": 1}


def test_a_batched_entry_gives_each_event_its_own_stable_id() -> None:
    """The events of an entry of many (enroll's, advance's) get ids derived from the entry
    and their place in it: distinct from each other and from every one-event entry's, in
    the entry's shard, the same on every read."""
    data = [{"contact_id": f"con_{n}"} for n in range(200)]
    fields = {"type": "contact.opted_in", "tenant": "a", "at": str(AT), "items": json.dumps(data)}
    for shards, shard in ((4, 3), (7, 6), (1024, 1023)):
        converted = envelope.convert(Entry(shard, f"{AT}-5", fields), shards)
        assert [c.contact_id for c in converted] == [d["contact_id"] for d in data]
        batch = [c.id for c in converted]
        assert batch == [c.id for c in envelope.convert(Entry(shard, f"{AT}-5", fields), shards)]
        assert batch == sorted(batch) and len(set(batch)) == 200
        assert {ids.shard_of(e, shards) for e in batch} == {shard}
        assert {ids.time_of(e) for e in batch} == {AT}
        singles = {event_ids.event_id(shard, f"{AT}-{n}", shards) for n in range(300)}
        others = {event_ids.event_id(shard, f"{AT}-{n}", shards, 0) for n in (4, 6)}
        assert not singles & set(batch) and not others & set(batch)
        # The largest sequence numbers stay inside the id's 60 bits.
        for seq in ((1 << 37) - 1, (1 << 49) - 1):
            assert ids.is_valid(event_ids.event_id(shard, f"{AT}-{seq}", shards, 4095), ids.EVENT)
            assert ids.is_valid(event_ids.event_id(shard, f"{AT}-{seq}", shards), ids.EVENT)


def test_event_ids_are_stable_unique_sorted_and_name_their_shard() -> None:
    one = event_ids.event_id(3, f"{AT}-0", 4)
    assert one == event_ids.event_id(3, f"{AT}-0", 4)
    assert ids.is_valid(one, ids.EVENT) and ids.shard_of(one, 4) == 3 and ids.time_of(one) == AT
    seen = {event_ids.event_id(s, f"{AT}-{n}", 4) for s in range(4) for n in range(50)}
    assert len(seen) == 200
    assert event_ids.event_id(0, f"{AT}-9", 4) < event_ids.event_id(0, f"{AT + 1}-0", 4)
    assert event_ids.event_id(0, f"{AT}-1", 4) < event_ids.event_id(0, f"{AT}-2", 4)
    # Odd shard counts keep the residue too.
    assert ids.shard_of(event_ids.event_id(6, f"{AT}-12345", 7), 7) == 6


def test_delivery_ids_derive_from_event_and_endpoint() -> None:
    evt = event_ids.event_id(2, f"{AT}-5", 4)
    a = event_ids.delivery_id(evt, "whe_a", 4)
    assert a == event_ids.delivery_id(evt, "whe_a", 4)
    assert a != event_ids.delivery_id(evt, "whe_b", 4)
    assert ids.is_valid(a, ids.DELIVERY) and ids.shard_of(a, 4) == 2 and ids.time_of(a) == AT


def test_converted_payload_is_the_event() -> None:
    [converted] = envelope.convert(_entry("contact.opted_in", {"contact_id": "con_1"}), 4)
    body = json.loads(converted.payload())
    assert list(body) == ["id", "type", "created_at", "data"]
    assert body["id"] == converted.id and body["created_at"] == to_rfc3339(AT)
    assert converted.contact_id == "con_1" and converted.created == AT


def test_the_log_keeps_data_as_stored_and_reads_it_shaped() -> None:
    """The reader does not shape what it logs (most events are never read): the payload
    holds the outbox's data and reads back as the event a webhook carries. A payload
    logged in the API form (before this) reads back unchanged."""
    eid = ids.new(ids.ENROLLMENT)
    fields = {"s": "seq_1", "c": "con_1", "st": "active", "i": "0", "n": str(AT)}
    [c] = envelope.convert(_entry("sequence.enrollment.created", {"id": eid, "fields": fields}), 4)
    logged = json.loads(c.logged())
    assert logged["data"] == {"id": eid, "fields": fields} and logged["shaped"] is False
    event = read_logged(c.logged()).event(c.id, 4)
    assert event == c.event() and msgspec.json.encode(event) == c.payload()
    assert event.data["id"] == eid and event.data["next_run_at"] == to_rfc3339(AT)
    assert read_logged(c.payload()).event(c.id, 4) == event
    assert read_logged(c.logged()).event(ids.new(ids.EVENT), 4) is None


def test_a_batch_is_logged_as_one_payload_and_each_event_read_from_it() -> None:
    """A batched entry's payload names its first event; `payload_id` finds it from any of
    the entry's event ids (and a one-event entry's id names its own); each event reads back
    as a webhook would carry it; an id past the batch's end is no event of it."""
    data = [{"contact_id": f"con_{n}"} if n != 2 else 7 for n in range(5)]
    for shards, shard in ((4, 3), (7, 6), (1024, 1023), (1000, 5)):
        fields = {
            "type": "contact.opted_in",
            "tenant": "a",
            "at": str(AT),
            "items": json.dumps(data),
        }
        converted = envelope.convert(Entry(shard, f"{AT}-{shards}", fields), shards)
        payload = read_logged(envelope.logged_batch(converted))
        for n, c in enumerate(converted):
            assert event_ids.payload_id(c.id, shards) == converted[0].id
            assert event_ids.batch_event_id(converted[0].id, n, shards) == c.id
            assert payload.event(c.id, shards) == c.event()
        assert converted[2].event().data == {}
        past = event_ids.batch_event_id(converted[0].id, 5, shards)
        assert event_ids.payload_id(past, shards) == converted[0].id
        assert payload.event(past, shards) is None
        for seq in (0, 9, (1 << 49) - 1):
            single = event_ids.event_id(shard, f"{AT}-{seq}", shards)
            assert event_ids.payload_id(single, shards) == single


def test_a_batch_of_good_items_is_logged_as_the_entry_had_it() -> None:
    """The reader logs a batch whose items are all objects with the entry's own text (no
    decode and encode again): every event reads back as the webhook would carry it, ids
    made together equal those made one by one."""
    data = [{"contact_id": f"con_{n}", "enrollment_id": f"enr_{n}", "n": n} for n in range(300)]
    text = json.dumps(data, separators=(",", ":"))
    fields = {"type": "contact.opted_in", "tenant": "a", "at": str(AT), "items": text}
    for shards, shard, seq in ((4, 3, 9), (7, 6, (1 << 37) - 1), (1024, 1023, (1 << 49) - 1)):
        made = event_ids.batch_event_ids(shard, f"{AT}-{seq}", shards, 4096)
        one_by_one = [event_ids.event_id(shard, f"{AT}-{seq}", shards, n) for n in range(4096)]
        assert made == one_by_one
        converted = envelope.convert(Entry(shard, f"{AT}-{seq}", fields), shards)
        logged = envelope.logged_batch(converted)
        assert text.encode() in logged
        payload = read_logged(logged)
        assert [payload.event(c.id, shards) for c in converted] == [c.event() for c in converted]
        assert [c.enrollment_id for c in converted] == [f"enr_{n}" for n in range(300)]


def test_subscription_rules() -> None:
    assert event_types.check_subscription(["*"]) == []
    assert event_types.check_subscription(list(event_names.TYPES)) == []
    [err] = event_types.check_subscription(["sequence.enrollment.created", "nope"])
    assert err.path == "events[1]"
    assert event_types.check_subscription(["*", "contact.bounced"])[0].path == "events"
    assert event_types.matches(["*"], "anything.at.all")
    assert not event_types.matches(["contact.bounced"], "contact.opted_out")


def test_signature_header_verifies_with_each_secret() -> None:
    old, new = signing.new_secret(), signing.new_secret()
    assert old.startswith("whsec_") and old != new
    body = b'{"id":"evt_1"}'
    import time

    ts = int(time.time())
    header = signing.header([new, old], "evt_1", ts, body)
    headers = {"webhook-id": "evt_1", "webhook-timestamp": str(ts), "webhook-signature": header}
    for secret in (old, new):
        Webhook(secret).verify(body, headers)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "0.0.0.0",
        "224.0.0.1",
        "100.64.0.1",
        "::1",
        "fe80::1%eth0",
        "fc00::1",
        "::ffff:127.0.0.1",
        "::",
        "ff02::1",
    ],
)
def test_non_public_addresses_are_forbidden(address: str) -> None:
    assert ssrf.forbidden(address)


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert not ssrf.forbidden(address)
