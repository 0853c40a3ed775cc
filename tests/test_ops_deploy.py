"""deploy/cluster-compose.yml: its structure and its settings (no container engine runs it here)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from seqd import config as configmod
from seqd.config import cluster_seeds

COMPOSE = Path(__file__).parent.parent / "deploy" / "cluster-compose.yml"


def _services() -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())["services"]
    return services


def test_the_cluster_compose_file_joins_three_nodes_that_both_seqd_processes_use() -> None:
    services = _services()
    nodes = sorted(name for name in services if name.startswith("valkey-"))
    assert nodes == ["valkey-1", "valkey-2", "valkey-3"]
    for name in nodes:
        command = services[name]["command"]
        assert "--cluster-enabled yes" in command and "--appendonly yes" in command
        assert services[name]["hostname"] == name
    init = services["cluster-init"]["command"]
    assert "--cluster create" in init
    assert sorted(re.findall(r"getent hosts (valkey-\d)", init)) == nodes
    seqds = [name for name in services if name.startswith("seqd-")]
    assert len(seqds) == 2
    for name in seqds:
        service = services[name]
        assert service["depends_on"]["cluster-init"]["condition"] == (
            "service_completed_successfully"
        )
        env = {k: str(v) for k, v in service["environment"].items()}
        loaded = configmod.load(environ=env)
        assert loaded.redis.is_cluster
        assert [host for host, _ in cluster_seeds(env["SEQD_REDIS_URL"])[1]] == nodes
        assert loaded.redis.shards % len(nodes) == 0 and loaded.redis.shards >= 4 * len(nodes)
    assert len({tuple(services[name]["ports"]) for name in seqds}) == 2
