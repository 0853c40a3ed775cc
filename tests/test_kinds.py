"""The step kinds: one spec per kind, read alike by Python and the scripts."""

from __future__ import annotations

from typing import get_args

import msgspec

from seqd import ids, kinds, models
from seqd.config import ChannelsConfig
from seqd.kinds import SPECS
from seqd.store.db import Store
from seqd.store.scripts import SCRIPTS
from tests.dispatchutil import Clock, enroll, raw, sequence, sms
from tests.lifecycleutil import contact, send_due


def test_every_kind_has_a_spec_the_layers_can_use() -> None:
    assert tuple(SPECS) == get_args(kinds.Kind)
    for struct in (models.StepIn, models.Step):
        (field,) = [f for f in msgspec.inspect.type_info(struct).fields if f.name == "kind"]
        assert isinstance(field.type, msgspec.inspect.LiteralType)
        assert sorted(field.type.values) == sorted(SPECS)
    cancel_reasons = {r.value for r in models.CancelReason}
    for kind, spec in SPECS.items():
        if spec.provider is not None:
            assert spec.provider in ChannelsConfig.__struct_fields__, kind
        if spec.suppression:
            assert spec.cancel_reason in cancel_reasons, kind
            assert kinds.CHANNEL_ADDRESS[kind] == spec.address
    assert kinds.letters(["sms", "email", "sms"]) == "ses"
    # Each kind's own step fields are fields of the step shapes; an action kind has no
    # address, no provider and no list.
    for kind, spec in SPECS.items():
        assert set(spec.fields) <= set(models.StepIn.__struct_fields__), kind
        assert set(spec.fields) <= set(models.Step.__struct_fields__), kind
        if spec.family == "action":
            assert (spec.address, spec.provider, spec.suppression) == (None, None, False), kind
    assert kinds.ACTION_KINDS == ("task", "webhook", "enroll")


def test_the_scripts_read_the_kinds_from_python() -> None:
    prelude = kinds.lua_constants()
    assert "local KIND_LETTER = {['sms'] = 's', ['email'] = 'e'" in prelude
    assert all(f"['{kind}'] = '{spec.letter}'" in prelude for kind, spec in SPECS.items())
    assert all(prelude in script.source for script in SCRIPTS.values())


async def test_stop_channel_keeps_an_enrollment_with_a_step_of_a_third_kind_left(
    any_store: Store,
) -> None:
    """The lifecycle Lua tells "only this channel left" for any number of kinds: a step of a
    kind that is neither SMS nor email (letter `t`) keeps the enrollment live."""
    s = any_store
    cid = await contact(s)
    seq = await sequence(s, sms(), sms(wait=10))
    (e,) = await enroll(s, seq, [cid])
    await send_due(s, Clock())
    shard = ids.shard_of(cid, s.shards)
    tag = s.keys.shard_tag(shard)
    keys = [s.keys.heads(shard), s.keys.outbox(shard), s.keys.mirrors(shard)]

    def args(letters: str) -> list[object]:
        return [tag, 2, "acme", cid, "sms", "opted_out", "contact.opted_out", "{}", 0, seq.id,
                1, letters]  # fmt: skip

    assert await s.runner.call("stopChannel", keys, args("st"), tag=tag) == []
    assert (await raw(s, e.id))["st"] == "active"
    assert await s.runner.call("stopChannel", keys, args("ss"), tag=tag) == [e.id]
    assert (await raw(s, e.id))["st"] == "cancelled"
