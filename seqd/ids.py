"""Prefixed, time-sortable ids, and the shard an id lives in.

An id is `<prefix>_` + 10 Crockford base32 characters of milliseconds since the epoch
+ 12 characters (60 bits) of randomness. Ids sort by creation time as strings, which the
listing indexes rely on (lexical ranges). The shard of a contact or an enrollment is the
random part modulo the shard count: an enrollment's random part is chosen to fall in its
contact's shard, so any id names its shard without a lookup.
"""

from __future__ import annotations

import os
import struct
import time

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Speed (ids are made and checked per enrollment): two characters per 10 bits, and
# decoding through int(..., 32) once the alphabet is mapped onto Python's base-32 digits.
_PAIRS = [a + b for a in ALPHABET for b in ALPHABET]
_TO_BASE32 = str.maketrans(ALPHABET, "0123456789abcdefghijklmnopqrstuv")
TIME_CHARS = 10
RANDOM_CHARS = 12
RANDOM_BITS = RANDOM_CHARS * 5

SEQUENCE = "seq"
CONTACT = "con"
ENROLLMENT = "enr"
MESSAGE = "msg"
WEBHOOK = "whe"
API_KEY = "key"
DELIVERY = "dlv"
EVENT = "evt"
SCHEDULE = "sch"
SENDER = "snd"
TASK = "tsk"
# A contact event whose caller gave it no id (POST /v1/contacts/{id}/events).
CONTACT_EVENT = "cev"


def _encode(value: int, width: int) -> str:
    out = []
    for _ in range(width // 2):
        out.append(_PAIRS[value & 1023])
        value >>= 10
    if width % 2:
        out.append(ALPHABET[value & 31])
    return "".join(reversed(out))


def _encode_random(value: int) -> str:
    """`_encode(value, RANDOM_CHARS)`, unrolled: it runs once per id."""
    p = _PAIRS
    return "".join(
        (p[value >> 50 & 1023], p[value >> 40 & 1023], p[value >> 30 & 1023],
         p[value >> 20 & 1023], p[value >> 10 & 1023], p[value & 1023])
    )  # fmt: skip


# Randomness from the OS in blocks: one getrandom call per 512 ids instead of one each
# (the syscall was the biggest single cost of making an id). A forked child starts a new
# block, so parent and child never hand out the same bits.
_BLOCK = 8 * 512
_random = b""
_taken = _BLOCK


def _random_bits() -> int:
    global _random, _taken
    if _taken >= _BLOCK:
        _random, _taken = os.urandom(_BLOCK), 0
    start = _taken
    _taken = start + 8
    return int.from_bytes(_random[start : start + 8], "big") >> (64 - RANDOM_BITS)


def _forget_random() -> None:
    global _taken
    _taken = _BLOCK


os.register_at_fork(after_in_child=_forget_random)


def _decode(text: str) -> int:
    if text.strip(ALPHABET):  # a character outside the alphabet is left over
        raise KeyError(text)
    return int(text.translate(_TO_BASE32) or "0", 32)


# The last millisecond encoded and its text: ids made together share it.
_last_time: tuple[int, str] = (-1, "")


def new(prefix: str, now_ms: int | None = None, random_part: int | None = None) -> str:
    global _last_time
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    rnd = _random_bits() if random_part is None else random_part
    last = _last_time
    if last[0] != ms:
        last = _last_time = (ms, _encode(ms, TIME_CHARS))
    return f"{prefix}_{last[1]}{_encode_random(rnd)}"


def new_in_shard(
    prefix: str,
    shard: int,
    shards: int,
    now_ms: int | None = None,
    random_part: int | None = None,
) -> str:
    """A new id whose shard is `shard`: the random part is moved to the right residue.

    `random_part` (< 2**60) makes the id a function of its inputs (derived ids, such as an
    event's from its outbox entry): the same inputs always give the same id.
    """
    rnd = _random_bits() if random_part is None else random_part
    rnd = rnd - (rnd % shards) + shard
    if rnd >= 1 << RANDOM_BITS:
        rnd -= shards
    return new(prefix, now_ms, rnd)


def many_in_shard(prefix: str, shard: int, shards: int, n: int, now_ms: int) -> list[str]:
    """`n` new ids in `shard` made at `now_ms`, as `new_in_shard` makes them: the time part
    encoded once and the randomness taken in one read (an enroll call makes hundreds)."""
    head = f"{prefix}_{_encode(now_ms, TIME_CHARS)}"
    top = 1 << RANDOM_BITS
    out = []
    for value in struct.unpack(f">{n}Q", os.urandom(8 * n)):
        rnd = value >> (64 - RANDOM_BITS)
        rnd = rnd - (rnd % shards) + shard
        if rnd >= top:
            rnd -= shards
        out.append(head + _encode_random(rnd))
    return out


def many_derived(prefix: str, shard: int, shards: int, now_ms: int, parts: list[int]) -> list[str]:
    """`new_in_shard(prefix, shard, shards, now_ms, random_part=p)` for each `p` of `parts`,
    the time part encoded once (a batched outbox entry's events: hundreds of ids a read)."""
    head = f"{prefix}_{_encode(now_ms, TIME_CHARS)}"
    top = 1 << RANDOM_BITS
    pairs = _PAIRS
    # Parts made together mostly share their high 40 bits: those characters are encoded once.
    high, stem = -1, ""
    out = []
    for rnd in parts:
        rnd = rnd - (rnd % shards) + shard
        if rnd >= top:
            rnd -= shards
        if rnd >> 20 != high:
            high = rnd >> 20
            stem = head + _encode_random(rnd)[:8]
        out.append(stem + pairs[rnd >> 10 & 1023] + pairs[rnd & 1023])
    return out


def is_valid(value: str, prefix: str) -> bool:
    head, _, body = value.partition("_")
    return head == prefix and len(body) == TIME_CHARS + RANDOM_CHARS and not body.strip(ALPHABET)


def shard_of(value: str, shards: int) -> int:
    """The shard of a valid contact or enrollment id (callers validate first)."""
    return _decode(value[-RANDOM_CHARS:]) % shards


def time_of(value: str) -> int:
    """Milliseconds encoded in a valid id."""
    body = value.partition("_")[2]
    return _decode(body[:TIME_CHARS])


def random_of(value: str) -> int:
    """The random part of a valid id."""
    return _decode(value[-RANDOM_CHARS:])


def with_random(value: str, random_part: int) -> str:
    """A valid id with its random part (< 2**60) replaced: same prefix, same time."""
    return value[:-RANDOM_CHARS] + _encode_random(random_part)
