"""seqd on a Valkey cluster: the seed-node URL, the cluster client, scripts on every primary.

The tests marked ON_CLUSTER run on the session's 3-primary cluster (tests/clusterutil.py), in
the slow tier; the rest check the configuration without a server.
"""

from __future__ import annotations

import asyncio
import itertools

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from seqd import cli, ids
from seqd import config as configmod
from seqd.config import ConfigError, cluster_seeds
from seqd.store import scripts, upserts
from seqd.store.client import _StoreConnection, connect, derive
from seqd.store.db import Store
from seqd.store.keys import SLOTS, SPREAD, Keys, spread_tags
from tests.clusterutil import ValkeyCluster
from tests.dispatchutil import contacts, enroll, sequence, sms


def test_a_cluster_url_names_its_seed_nodes_and_keeps_credentials_and_options() -> None:
    first, seeds = cluster_seeds(
        "rediss+cluster://u:p%40w@h1:7000,[::1]:7001,h3/0?ssl_cert_reqs=none"
    )
    assert seeds == [("h1", 7000), ("::1", 7001), ("h3", 6379)]
    assert first == "rediss://u:p%40w@h1:7000/0?ssl_cert_reqs=none"
    assert cluster_seeds("valkey+cluster://127.0.0.1:1")[0] == "redis://127.0.0.1:1"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"SEQD_REDIS_CLUSTER": "true"}, "redis: cluster = true needs a url"),
        ({"SEQD_REDIS_URL": "valkey+cluster://h:1,:2"}, "redis: url: bad seed node ':2'"),
        ({"SEQD_REDIS_URL": "valkey+cluster://h:99999"}, "redis: url: bad seed node"),
        ({"SEQD_REDIS_URL": "valkey+cluster://h:1/2"}, "redis: url: a cluster has one database"),
        (
            {"SEQD_REDIS_URL": "unix:///tmp/v.sock", "SEQD_REDIS_CLUSTER": "1"},
            "redis: url: a cluster's url is valkey+cluster://",
        ),
    ],
)
def test_a_cluster_setting_that_cannot_work_is_a_config_error(
    environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        configmod.load(environ=environ)
    assert str(caught.value).startswith(message)


def test_a_cluster_url_or_the_setting_makes_a_cluster_client() -> None:
    by_url = configmod.load(environ={"SEQD_REDIS_URL": "valkey+cluster://127.0.0.1:1"})
    by_flag = configmod.load(
        environ={"SEQD_REDIS_URL": "redis://127.0.0.1:1", "SEQD_REDIS_CLUSTER": "true"}
    )
    assert by_url.redis.is_cluster and by_flag.redis.is_cluster
    assert not configmod.load(environ={"SEQD_REDIS_URL": "redis://h:1"}).redis.is_cluster
    client = connect("redis://127.0.0.1:1", cluster=True)
    assert isinstance(client, RedisCluster)
    # The connections pack with hiredis and turn uvloop's RuntimeError into ConnectionError.
    assert issubclass(client.connection_kwargs["connection_class"], _StoreConnection)
    assert all(issubclass(node.connection_class, _StoreConnection) for node in client.startup_nodes)


def test_check_config_masks_a_password_in_a_cluster_url() -> None:
    loaded = configmod.load(environ={"SEQD_REDIS_URL": "valkey+cluster://u:hunter2@h:1,h2:2"})
    assert configmod.masked(loaded)["redis"]["url"] == "valkey+cluster://u:***@h:1,h2:2"


async def _on_each_primary(cluster: ValkeyCluster, *command: object) -> list[object]:
    answers = []
    for port in cluster.primary_ports():
        async with aioredis.Redis(port=port) as node:
            answers.append(await node.execute_command(*command))
    return answers


@pytest.mark.slow
@pytest.mark.cluster
async def test_opening_a_store_loads_every_script_on_every_primary(
    valkey_cluster: ValkeyCluster, cluster_store: Store
) -> None:
    shas = [script.sha for script in scripts.SCRIPTS.values()]
    for loaded in await _on_each_primary(valkey_cluster, "SCRIPT", "EXISTS", *shas):
        assert loaded == [1] * len(shas)


@pytest.mark.slow
@pytest.mark.cluster
async def test_a_primary_that_lost_its_scripts_gets_them_on_the_next_call(
    valkey_cluster: ValkeyCluster, cluster_store: Store
) -> None:
    """A promoted replica or a restarted node has no scripts: NOSCRIPT, then EVAL, per call
    and within a pipelined round trip."""
    seq = await sequence(cluster_store, sms())
    cids = await contacts(cluster_store, 8)
    await _on_each_primary(valkey_cluster, "SCRIPT", "FLUSH")
    enrolled = await enroll(cluster_store, seq, cids)
    assert {e.contact_id for e in enrolled} == set(cids)
    assert (await cluster_store.enrollments.get("acme", enrolled[0].id)).status == "active"


@pytest.mark.slow
@pytest.mark.cluster
async def test_a_derived_client_reaches_the_same_cluster_with_its_own_options(
    cluster_store: Store,
) -> None:
    derived = derive(
        cluster_store.client, encoding_errors="surrogateescape", wait_longer=2, max_connections=2
    )
    try:
        assert isinstance(derived, RedisCluster)
        await cluster_store.client.set(f"{cluster_store.keys.prefix}:x", b"caf\xe9")
        text = await derived.get(f"{cluster_store.keys.prefix}:x")
        assert text == b"caf\xe9".decode("utf-8", "surrogateescape")
        assert derived.connection_kwargs["socket_timeout"] == 7.0
    finally:
        await derived.aclose()


@pytest.mark.slow
@pytest.mark.cluster
def test_seqd_keys_creates_lists_and_revokes_on_a_cluster(
    valkey_cluster: ValkeyCluster,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("SEQD_CHECK_SLOTS")  # the tests' switch, not a setting
    monkeypatch.setenv("SEQD_REDIS_URL", valkey_cluster.url)
    monkeypatch.setenv("SEQD_REDIS_PREFIX", prefix)
    assert cli.main(["keys", "create", "--tenant", "acme", "--label", "ci"]) == 0
    secret = capsys.readouterr().out.strip().splitlines()[-1]
    assert secret.startswith("sk_live_")
    assert cli.main(["keys", "list", "--tenant", "acme"]) == 0
    [line] = capsys.readouterr().out.strip().splitlines()
    key_id, shown, _, label = line.split("\t")
    assert secret.startswith(shown.rstrip("…")) and label == "ci"
    assert cli.main(["keys", "revoke", key_id]) == 0
    assert cli.main(["keys", "list", "--tenant", "acme"]) == 0
    assert capsys.readouterr().out.strip().splitlines() == [f"revoked {key_id}"]


def _primary_ranges(primaries: int) -> list[range]:
    """The slot runs `valkey-cli --cluster create` gives `primaries` primaries, about equal."""
    bounds = [round(i * SLOTS / primaries) for i in range(primaries + 1)]
    return [range(low, high) for low, high in itertools.pairwise(bounds)]


@pytest.mark.parametrize("prefix", ["seqd", "abc", "t0a1b2c3d4e", "x"])
def test_spread_shard_tags_put_at_most_ceil_s_over_n_plus_one_shards_on_a_primary(
    prefix: str,
) -> None:
    for shards in (1, 2, 3, 4, 16, 24, 64, 100):
        tags = spread_tags(prefix, shards)
        slots = [key_slot(tag.encode()) for tag in tags]
        assert len(set(tags)) == shards
        for shard, slot in enumerate(slots):
            assert shard * SLOTS // shards <= slot < (shard + 1) * SLOTS // shards
        for primaries in range(1, 11):
            held = [sum(slot in run for slot in slots) for run in _primary_ranges(primaries)]
            assert max(held) <= -(-shards // primaries) + 1, (shards, primaries, held)


async def test_a_new_store_spreads_its_shard_tags_and_an_older_one_keeps_its_own(
    fake_store: Store, prefix: str
) -> None:
    assert fake_store.keys.shard_tag(1) == spread_tags(prefix, 4)[1]
    assert await fake_store.client.hget(fake_store.keys.meta(), "tags") == SPREAD
    # A store made before the tags spread: its meta has no `tags`.
    older = f"{prefix}old"
    await fake_store.client.hset(Keys(older, 1).meta(), mapping={"shards": 4, "schema": 2})
    reopened = await Store.open(fake_store.client, older, 16)
    assert reopened.shards == 4
    assert [reopened.keys.shard_tag(s) for s in range(4)] == [f"{{{older}:{s}}}" for s in range(4)]


async def test_processes_opening_a_new_store_at_once_agree_on_its_layout(
    fake_store: Store, prefix: str
) -> None:
    fresh = f"{prefix}new"
    opened = await asyncio.gather(*(Store.open(fake_store.client, fresh, 8) for _ in range(6)))
    assert {(s.shards, s.keys.shard_tag(5)) for s in opened} == {(8, spread_tags(fresh, 8)[5])}


@pytest.mark.slow
@pytest.mark.cluster
async def test_a_new_stores_shards_spread_evenly_over_the_primaries(
    valkey_cluster: ValkeyCluster, prefix: str
) -> None:
    for shards in (3, 16, 32):
        store = await Store.open(connect(valkey_cluster.url), f"{prefix}s{shards}", shards)
        try:
            owners: dict[int, int] = {}
            async with aioredis.Redis(port=valkey_cluster.primary_ports()[0]) as node:
                ranges = await node.execute_command("CLUSTER", "SLOTS")
            for low, high, (_, port, *_rest), *_replicas in ranges:
                for shard in range(shards):
                    if low <= key_slot(store.keys.shard_tag(shard).encode()) <= high:
                        owners[shard] = port
            held = sorted(list(owners.values()).count(port) for port in set(owners.values()))
            assert len(owners) == shards and len(held) == 3
            assert max(held) <= -(-shards // 3) + 1, held
        finally:
            await store.close()


@pytest.mark.slow
@pytest.mark.cluster
async def test_reading_the_outbox_costs_no_key_lookup_round_trip(
    valkey_cluster: ValkeyCluster, cluster_store: Store
) -> None:
    """redis-py would ask the server for XREADGROUP's keys (COMMAND GETKEYS) before every
    read of every shard; the store's cluster client finds them after STREAMS itself."""

    async def lookups() -> int:
        total = 0
        for port in valkey_cluster.primary_ports():
            async with aioredis.Redis(port=port, decode_responses=True) as node:
                stats = await node.info("commandstats")
            total += int(stats.get("cmdstat_command|getkeys", {}).get("calls", 0))
        return total

    await cluster_store.outbox.ensure_group()
    before = await lookups()
    for _ in range(3):
        assert await cluster_store.outbox.read("reader-1", 10) == []
    assert await lookups() == before


@pytest.mark.slow
@pytest.mark.cluster
async def test_a_batch_of_new_inline_contacts_is_upserted_across_the_primaries(
    cluster_store: Store,
) -> None:
    """One linkContacts call in the tenant's slot, one createContacts call per shard (each
    on the primary owning that shard's slot); the same rows again change nothing."""
    rows = [{"phone": f"+1415555{i:04d}", "first_name": f"n{i}"} for i in range(64)]
    first = await upserts.upsert_many(cluster_store, "acme", [dict(r) for r in rows])
    assert [r.change for r in first if isinstance(r, upserts.Upserted)] == ["created"] * 64
    again = await upserts.upsert_many(cluster_store, "acme", [dict(r) for r in rows])
    assert [(r.contact.id, r.change) for r in again if isinstance(r, upserts.Upserted)] == [
        (r.contact.id, "unchanged") for r in first if isinstance(r, upserts.Upserted)
    ]
    shards = {ids.shard_of(r.contact.id, cluster_store.shards) for r in first
              if isinstance(r, upserts.Upserted)}  # fmt: skip
    assert len(shards) > 1
