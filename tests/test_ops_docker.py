"""The Dockerfile's structure (no Docker daemon here to build it) and its health check,
run for real against a seqd app."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path

from aiohttp.test_utils import TestServer

from seqd.api.app import create_app
from seqd.config import Config
from seqd.store.db import Store

ROOT = Path(__file__).parent.parent
DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def stages() -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for ins in instructions():
        if ins[0] == "FROM":
            found.append([])
        if found:
            found[-1].append(ins)
    return found


def test_multi_stage_slim_build() -> None:
    all_stages = stages()
    assert len(all_stages) >= 2
    froms = [s[0][1] for s in all_stages]
    assert all("slim" in f for f in froms), froms
    assert re.search(r"\bAS build$", froms[0], re.IGNORECASE)
    build = all_stages[0]
    assert any(i == "RUN" and "pip wheel" in a for i, a in build)
    runtime = all_stages[-1]
    # The runtime takes only the wheels from the build stage, not the source tree.
    assert any("from=build" in a for _, a in runtime)
    assert not any(i == "COPY" and "--from" not in a for i, a in runtime)


def test_runtime_runs_unprivileged_with_health_check() -> None:
    runtime = stages()[-1]
    users = [a for i, a in runtime if i == "USER"]
    assert users, "no USER in the runtime stage"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    health = [a for i, a in runtime if i == "HEALTHCHECK"]
    assert len(health) == 1
    assert "/healthz" in health[0]
    assert "curl" not in health[0] and "wget" not in health[0]
    env = " ".join(a for i, a in runtime if i == "ENV")
    assert "SEQD_HTTP_HOST=0.0.0.0" in env
    assert any(i == "EXPOSE" and "8080" in a for i, a in runtime)
    entry = [json.loads(a) for i, a in runtime if i == "ENTRYPOINT"]
    cmd = [json.loads(a) for i, a in runtime if i == "CMD"]
    assert entry[-1] + cmd[-1] == ["seqd", "serve"]
    assert ("STOPSIGNAL", "SIGTERM") in runtime


def test_build_context_holds_what_the_build_copies() -> None:
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in ignore
    for needed in ("!pyproject.toml", "!README.md", "!seqd/"):
        assert needed in ignore
    copies = [a for i, a in stages()[0] if i == "COPY"]
    copied = " ".join(copies)
    for path in ("pyproject.toml", "README.md", "seqd"):
        assert path in copied


async def test_health_check_command_works(store: Store) -> None:
    health = next(a for i, a in stages()[-1] if i == "HEALTHCHECK")
    command = json.loads(health[health.index("CMD") + 3 :].strip())
    assert command[0] == "python"
    server = TestServer(create_app(Config(), store), host="127.0.0.1")
    await server.start_server()
    try:
        env = {**os.environ, "SEQD_HTTP_PORT": str(server.port)}
        process = await asyncio.create_subprocess_exec(sys.executable, *command[1:], env=env)
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        await server.close()
    # And it fails when nothing answers.
    process = await asyncio.create_subprocess_exec(
        sys.executable, *command[1:], env=env, stderr=asyncio.subprocess.DEVNULL
    )
    assert await asyncio.wait_for(process.wait(), 30) != 0
