"""A real Valkey cluster for the cluster tests: primaries (and replicas) on free loopback ports,
joined by the `valkey-cli` that ships beside the `valkey-server` the store tests run."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import redis

from seqd.embedded import find_binary
from tests.conftest import ValkeyProcess, free_port

# A primary that stops answering is failed over after this long (valkey's cluster-node-timeout).
NODE_TIMEOUT_MS = 1000


def cli_binary() -> str:
    """The valkey-cli beside the valkey-server the tests use, else one on PATH."""
    beside = Path(find_binary()).with_name("valkey-cli")
    if beside.exists():
        return str(beside)
    for name in ("valkey-cli", "redis-cli"):
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError("no valkey-cli beside valkey-server nor on PATH")


class ValkeyCluster:
    """`primaries` cluster nodes holding the 16384 slots in even ranges, each with `replicas`
    replicas; `start()` returns once every node says `cluster_state:ok` and knows every other."""

    def __init__(self, directory: Path, primaries: int = 3, replicas: int = 0) -> None:
        self.primaries = primaries
        self.replicas = replicas
        self.nodes = [
            ValkeyProcess(
                directory / f"node-{i}",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                # The bus port is its own free port: the default (port + 10000) may be taken.
                "--cluster-port",
                str(free_port()),
                "--cluster-node-timeout",
                str(NODE_TIMEOUT_MS),
            )
            for i in range(primaries * (1 + replicas))
        ]

    @property
    def url(self) -> str:
        """The seed-node URL seqd takes (`valkey+cluster://host:port,host:port`)."""
        seeds = ",".join(f"127.0.0.1:{node.port}" for node in self.nodes[: self.primaries])
        return f"valkey+cluster://{seeds}"

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        subprocess.run(
            [
                cli_binary(),
                "--cluster",
                "create",
                *(f"127.0.0.1:{node.port}" for node in self.nodes),
                "--cluster-replicas",
                str(self.replicas),
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        self.wait_ok()

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every running node reports the cluster ok, all its peers connected, and as
        many primaries with slots as there should be."""
        deadline = time.monotonic() + timeout
        while not all(self._ok(node) for node in self.running()):
            if time.monotonic() > deadline:
                raise TimeoutError("the cluster did not become ok")
            time.sleep(0.05)

    def _ok(self, node: ValkeyProcess) -> bool:
        with redis.Redis(port=node.port, decode_responses=True) as client:
            info: str = client.execute_command("CLUSTER", "INFO")
            lines: list[str] = client.execute_command("CLUSTER", "NODES").strip().splitlines()
            replication = client.info("replication")
        serving = [line for line in lines if "master" in line and "fail" not in line]
        return (
            "cluster_state:ok" in info
            and len(serving) == self.primaries
            and all("disconnected" not in line for line in lines if "fail" not in line)
            # A replica counts once it has its primary's data (it can take over).
            and replication.get("master_link_status", "up") == "up"
        )

    def running(self) -> list[ValkeyProcess]:
        return [node for node in self.nodes if node.process is not None]

    def primary_ports(self) -> list[int]:
        """The ports of the nodes that serve slots now (a failover changes them)."""
        node = self.running()[0]
        with redis.Redis(port=node.port, decode_responses=True) as client:
            shards = client.execute_command("CLUSTER", "SLOTS")
        return sorted({int(entry[2][1]) for entry in shards})

    def owner(self, key: str) -> int:
        """The port of the primary serving `key`'s slot now."""
        node = self.running()[0]
        with redis.Redis(port=node.port, decode_responses=True) as client:
            slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
            ranges = client.execute_command("CLUSTER", "SLOTS")
        return next(int(r[2][1]) for r in ranges if int(r[0]) <= slot <= int(r[1]))

    def reshard(self, source: int, target: int, slots: int) -> None:
        """Move `slots` slots (with their keys) from the primary on port `source` to the one
        on `target`, as an operator would: `valkey-cli --cluster reshard`."""

        def node_id(port: int) -> str:
            with redis.Redis(port=port, decode_responses=True) as client:
                return str(client.execute_command("CLUSTER", "MYID"))

        subprocess.run(
            [
                cli_binary(),
                "--cluster",
                "reshard",
                f"127.0.0.1:{source}",
                "--cluster-from",
                node_id(source),
                "--cluster-to",
                node_id(target),
                "--cluster-slots",
                str(slots),
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def node(self, port: int) -> ValkeyProcess:
        return next(node for node in self.nodes if node.port == port)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@contextlib.contextmanager
def running(directory: Path, primaries: int = 3, replicas: int = 0) -> Iterator[ValkeyCluster]:
    """A cluster started in `directory`, stopped on the way out."""
    cluster = ValkeyCluster(directory, primaries=primaries, replicas=replicas)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
