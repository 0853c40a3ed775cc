"""The embedded store runs with the AOF rewrite thresholds configured and with the encodings
that keep contacts and enrollments compact."""

from __future__ import annotations

from pathlib import Path

import redis.asyncio as aioredis

from seqd.config import EmbeddedConfig
from seqd.embedded import EmbeddedServer


async def test_the_server_runs_with_the_configured_rewrite_thresholds(tmp_path: Path) -> None:
    config = EmbeddedConfig(
        data_dir=str(tmp_path / "data"), aof_rewrite_percentage=250, aof_rewrite_min_mb=300
    )
    server = EmbeddedServer(config)
    url = await server.start(own=True)
    client = aioredis.from_url(url, decode_responses=True)
    try:
        settings = await client.config_get("auto-aof-rewrite-*")
        assert settings["auto-aof-rewrite-percentage"] == "250"
        assert settings["auto-aof-rewrite-min-size"] == str(300 * 1024 * 1024)
        # A contact whose attributes pass the server's default 64 bytes stays a listpack.
        await client.hset("c", mapping={"tenant": "t", "attributes": "x" * 200})
        assert await client.object("encoding", "c") == "listpack"
    finally:
        await client.aclose()
        await server.stop()
