"""The small `seqd` commands: --version, keys list without a tenant, redis-cli, and hints
that survive a narrow terminal."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from seqd import __version__, cli, rediscli
from tests.conftest import ValkeyProcess


def _env(tmp_path: Path, valkey: ValkeyProcess | None, prefix: str = "") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEQD_")}
    env.update(SEQD_EMBEDDED_DATA_DIR=str(tmp_path / "data"), SEQD_LOG_FORMAT="json")
    if valkey is not None:
        env.update(SEQD_REDIS_URL=valkey.url, SEQD_REDIS_PREFIX=prefix)
    return env


def _seqd(*args: str, env: dict[str, str], **kw: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "seqd", *args],
        env={**env, **kw},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"seqd {__version__}\n"


def test_keys_list_without_a_tenant_lists_the_tenants(
    tmp_path: Path, valkey: ValkeyProcess, prefix: str
) -> None:
    env = _env(tmp_path, valkey, prefix)
    for tenant in ("beta", "acme", "acme"):
        assert _seqd("keys", "create", "--tenant", tenant, env=env).returncode == 0
    listed = _seqd("keys", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines() == ["acme\t2 keys", "beta\t1 key"]
    one = _seqd("keys", "list", "--tenant", "beta", env=env)
    assert len(one.stdout.splitlines()) == 1 and one.stdout.startswith("key_")


def test_the_import_hint_is_one_line_on_a_narrow_terminal(
    tmp_path: Path, valkey: ValkeyProcess, prefix: str
) -> None:
    csv = tmp_path / "c.csv"
    csv.write_text("phone\n+14155550100\n")
    env = _env(tmp_path, valkey, prefix)
    done = _seqd("import", str(csv), "--tenant", "ghost-tenant", env=env, COLUMNS="30")
    assert done.returncode == 2
    assert "seqd keys create --tenant ghost-tenant" in done.stderr


def test_redis_cli_on_redis_url(tmp_path: Path, valkey: ValkeyProcess, prefix: str) -> None:
    env = _env(tmp_path, valkey, prefix)
    assert _seqd("keys", "create", "--tenant", "acme", env=env).returncode == 0
    done = _seqd("redis-cli", "SISMEMBER", f"{{{prefix}}}:tenants", "acme", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"


def test_redis_cli_on_the_embedded_store(tmp_path: Path) -> None:
    """No seqd running: the command starts the store for itself, as the docs' examples
    (docs/redis-intake.md) need, and stops it again."""
    env = _env(tmp_path, None)
    added = _seqd("redis-cli", "XADD", "seqd:intake", "*", "tenant", "acme", env=env)
    assert added.returncode == 0, added.stderr
    assert "-" in added.stdout  # the entry's id
    length = _seqd("redis-cli", "XLEN", "seqd:intake", env=env)
    assert length.stdout.strip() == "1"
    assert not (tmp_path / "data" / "valkey.sock").exists()


def test_url_forms() -> None:
    assert rediscli.url_args("redis://h:6379/2") == ["-u", "redis://h:6379/2"]
    assert rediscli.url_args("unix:///run/v.sock") == ["-s", "/run/v.sock"]
    assert rediscli.url_args("unix:///run/v.sock?db=3") == ["-s", "/run/v.sock", "-n", "3"]
