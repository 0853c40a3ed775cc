"""Writes that answer only once replicas have them (`redis.wait_replicas`).

Redis replicates asynchronously: a primary lost right after it acknowledged a write may
take it along. WAIT blocks until the replicas acknowledged every write its *connection*
made (the server keeps the replication offset of each client's last write), so it must
follow the write on the connection that sent it, on the node that took it. On one server
that is a pipeline: the writes, then WAIT. On a cluster each node gets its own pipeline
(one connection) of the writes whose slot it serves, then WAIT; a write redirected
elsewhere (MOVED, ASK) did not run where it was sent and goes again, with its own WAIT,
to the node that serves it.

WAIT does not undo anything: a write whose replicas did not answer in time stays on the
primary, and the caller sees `ReplicasBehind` (the API's 503), so it retries a write that
is idempotent or fails cleanly (an enrollment answers the existing one; a transition
already made answers 409).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio.cluster import ClusterNode, PipelineCommand, RedisCluster
from redis.exceptions import AskError, ClusterDownError, MovedError, NoScriptError, TryAgainError

from seqd.store.client import Client

# Rounds a write may be redirected or refused (TRYAGAIN) before the caller sees the error.
ROUNDS = 5
_REDIRECTS = (MovedError, AskError, TryAgainError, ClusterDownError)


class ReplicasBehind(Exception):
    """Fewer replicas than required acknowledged a write within the timeout: the write is
    on the primary (`node`), not yet known to be on a replica."""

    def __init__(self, acknowledged: int, wanted: int, timeout_ms: int, node: str) -> None:
        super().__init__(
            f"{acknowledged} of {wanted} replicas of {node} acknowledged within {timeout_ms} ms"
        )
        self.acknowledged, self.wanted, self.timeout_ms = acknowledged, wanted, timeout_ms


@dataclass(frozen=True, slots=True)
class ReplicaWait:
    """How many replicas must acknowledge a write, and how long WAIT waits for them."""

    replicas: int
    timeout_ms: int


@dataclass(frozen=True, slots=True)
class Write:
    """A command with the keys of one slot; `fallback` is sent instead after NOSCRIPT
    (EVAL for EVALSHA)."""

    args: tuple[Any, ...]
    key: str
    fallback: tuple[Any, ...] | None = None


async def write_and_wait(client: Client, writes: Sequence[Write], wait: ReplicaWait) -> list[Any]:
    """Each write's result (or the error it answered, as a pipeline's `raise_on_error=False`
    gives it) once `wait.replicas` replicas of its node have it; else `ReplicasBehind`."""
    if isinstance(client, RedisCluster):
        return await _on_cluster(client, writes, wait)
    results: list[Any] = [None] * len(writes)
    todo = [(i, w.args) for i, w in enumerate(writes)]
    while todo:
        pipe = client.pipeline(transaction=False)
        for _, args in todo:
            pipe.execute_command(*args)
        pipe.execute_command("WAIT", wait.replicas, wait.timeout_ms)
        answers = await pipe.execute(raise_on_error=False)
        if _ran(answers[:-1]):
            _check(answers[-1], wait, "the server")
        again = []
        for (i, args), answer in zip(todo, answers, strict=False):
            fallback = writes[i].fallback
            if isinstance(answer, NoScriptError) and fallback is not None and args != fallback:
                again.append((i, fallback))
            else:
                results[i] = answer
        todo = again
    return results


def _ran(answers: Sequence[Any]) -> bool:
    """Whether any of these writes ran (a redirected or unknown script did not): only then
    must WAIT have seen the replicas."""
    return any(not isinstance(a, (*_REDIRECTS, NoScriptError)) for a in answers)


def _check(acknowledged: Any, wait: ReplicaWait, node: str) -> None:
    if isinstance(acknowledged, Exception):
        raise acknowledged
    if int(acknowledged) < wait.replicas:
        raise ReplicasBehind(int(acknowledged), wait.replicas, wait.timeout_ms, node)


@dataclass(slots=True)
class _Pending:
    index: int
    args: tuple[Any, ...]
    # The node an ASK sent the write to (with ASKING before it), else None: the slot's owner.
    asked: ClusterNode | None = None


async def _on_cluster(
    client: RedisCluster, writes: Sequence[Write], wait: ReplicaWait
) -> list[Any]:
    results: list[Any] = [None] * len(writes)
    todo = [_Pending(i, w.args) for i, w in enumerate(writes)]
    refused: Exception = ClusterDownError("writes kept being redirected")
    for _ in range(ROUNDS):
        by_node: dict[str, tuple[ClusterNode, list[_Pending]]] = {}
        for p in todo:
            node = p.asked or client.get_node_from_key(writes[p.index].key)
            if node is None:
                raise ClusterDownError(f"no node serves {writes[p.index].key}")
            by_node.setdefault(node.name, (node, []))[1].append(p)
        sent = await asyncio.gather(
            *(_node_round(node, pending, wait) for node, pending in by_node.values()),
            return_exceptions=True,
        )
        todo = []
        for (_, pending), answers in zip(by_node.values(), sent, strict=True):
            if isinstance(answers, BaseException):
                # Not resent (the writes may have run): the caller sees the error. An
                # ordinary command to one of the keys lets the client find the topology
                # again (its retries and refresh) for the next call.
                with contextlib.suppress(Exception):
                    await client.exists(writes[pending[0].index].key)
                raise answers
            for p, answer in zip(pending, answers, strict=True):
                write = writes[p.index]
                if isinstance(answer, NoScriptError) and write.fallback not in (None, p.args):
                    assert write.fallback is not None
                    todo.append(_Pending(p.index, write.fallback, p.asked))
                elif isinstance(answer, AskError):
                    # The slot is migrating and the key has left: once, to the new node.
                    refused = answer
                    target = client.get_node(host=answer.host, port=answer.port)
                    todo.append(_Pending(p.index, p.args, target))
                elif isinstance(answer, _REDIRECTS):
                    refused = answer
                    if isinstance(answer, MovedError):
                        # An ordinary command follows MOVED and updates the client's slots.
                        await client.exists(write.key)
                    else:
                        await asyncio.sleep(0.05)
                    todo.append(_Pending(p.index, p.args))
                else:
                    results[p.index] = answer
        if not todo:
            return results
    raise refused


async def _node_round(node: ClusterNode, pending: list[_Pending], wait: ReplicaWait) -> list[Any]:
    """The writes on one connection of `node`, then WAIT on it; each write's answer."""
    commands: list[PipelineCommand] = []
    own: list[PipelineCommand] = []
    for p in pending:
        if p.asked is not None:
            commands.append(PipelineCommand(-1, "ASKING"))
        command = PipelineCommand(p.index, *p.args)
        commands.append(command)
        own.append(command)
    acknowledged = PipelineCommand(-1, "WAIT", wait.replicas, wait.timeout_ms)
    commands.append(acknowledged)
    await node.execute_pipeline(commands)
    answers = [c.result for c in own]
    if _ran(answers):
        _check(acknowledged.result, wait, node.name)
    return answers
