"""API keys: random enough, stored only as SHA-256, looked up by hash (never compared in
the clear), shown once, revocable at once, and `sk_live_` / `sk_test_` tell them apart."""

from __future__ import annotations

import ast
import hashlib
import inspect
import math
import re
from pathlib import Path

from seqd.store import tenants
from seqd.store.db import Store
from tests.conftest import Api

ROOT = Path(__file__).resolve().parents[1] / "seqd"


async def test_keys_are_random_with_at_least_128_bits(store: Store) -> None:
    secrets = [(await store.tenants.create_key("acme"))[1] for _ in range(50)]
    assert len(set(secrets)) == 50
    for secret in secrets:
        assert re.fullmatch(r"sk_live_[A-Za-z0-9]{32}", secret), secret
    bits = tenants.SECRET_CHARS * math.log2(62)
    assert bits >= 128, bits
    # Every base62 character shows up at some position: not a narrow alphabet.
    assert len(set("".join(s[8:] for s in secrets))) > 55


async def test_live_and_test_prefixes(store: Store) -> None:
    live, live_secret = await store.tenants.create_key("acme")
    test, test_secret = await store.tenants.create_key("acme", test=True)
    assert live_secret.startswith("sk_live_") and test_secret.startswith("sk_test_")
    assert live.prefix == live_secret[:12] and test.prefix == test_secret[:12]
    assert await store.tenants.authenticate(test_secret) == "acme"


async def test_only_the_sha256_is_stored_and_the_secret_is_shown_once(store: Store) -> None:
    key, secret = await store.tenants.create_key("acme", "ci")
    stored = await store.client.hgetall(store.keys.api_keys())
    assert hashlib.sha256(secret.encode()).hexdigest() in stored
    # The secret is nowhere in the store: not in any key name or value of this prefix.
    async for name in store.client.scan_iter(match=f"*{store.keys.prefix}*"):
        assert secret not in name
        kind = await store.client.type(name)
        if kind == "hash":
            dump = str(await store.client.hgetall(name))
        elif kind == "string":
            dump = str(await store.client.get(name))
        elif kind == "set":
            dump = str(await store.client.smembers(name))
        else:
            continue
        assert secret not in dump and secret[12:] not in dump, name
    # Listing shows the prefix, never the secret.
    (listed,) = [k for k in await store.tenants.list_keys("acme") if k.id == key.id]
    assert listed.prefix == secret[:12]
    assert secret[12:] not in str(listed)


async def test_revoked_key_stops_at_once(api: Api) -> None:
    key, secret = await api.store.tenants.create_key("acme")
    assert (await api.call("GET", "/contacts", key=secret))[0] == 200
    assert await api.store.tenants.revoke(key.id)
    status, body = await api.call("GET", "/contacts", key=secret)
    assert status == 401 and body["type"] == "urn:seqd:problem:unauthorized"  # type: ignore[index]
    assert not await api.store.tenants.revoke(key.id)


async def test_near_misses_are_refused(api: Api) -> None:
    secret = api.key
    for wrong in (secret[:-1], secret + "x", secret.upper(), " " + secret[1:], secret[:12]):
        assert (await api.call("GET", "/contacts", key=wrong))[0] == 401, wrong


def _compares_a_secret(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(
            isinstance(op, (ast.Eq, ast.NotEq)) for op in node.ops
        ):
            names = {
                n.id if isinstance(n, ast.Name) else n.attr
                for n in ast.walk(node)
                if isinstance(n, (ast.Name, ast.Attribute))
            }
            if names & {"secret", "key", "token", "signature", "mac", "digest"}:
                found.append(ast.unparse(node))
    return found


def test_no_secret_is_compared_with_equals() -> None:
    """Keys are looked up by their hash (the HGET field), and every other secret (Twilio
    signatures, unsubscribe tokens, inbound email secrets) goes through
    hmac.compare_digest: no `==` on a secret anywhere it is checked."""
    checked = [
        "api/auth.py",
        "store/tenants.py",
        "api/inbound.py",
        "lifecycle/twilio_signature.py",
        "lifecycle/unsubscribe.py",
        "api/unsubscribe.py",
    ]
    for name in checked:
        source = (ROOT / name).read_text()
        assert not _compares_a_secret(ast.parse(source)), name
    # The presented key is hashed before anything else looks at it.
    assert "hash_key(secret)" in inspect.getsource(tenants.Tenants.authenticate)
