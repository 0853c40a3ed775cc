"""`seqd ingest-email [--tenant T] < message`: the inbound email endpoint for MTA pipes.

Postfix (`pipe(8)`, `mailbox_command`), procmail or an alias `|seqd ingest-email` hand
the raw message on stdin. Exit codes follow sysexits.h, which MTAs read: 0 done (whatever
the message was), 65 (EX_DATAERR) no message, 75 (EX_TEMPFAIL) the store is unreachable,
so the MTA keeps the message and tries again later instead of bouncing it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Coroutine
from typing import Any, BinaryIO, TextIO

import msgspec
import redis.exceptions

from seqd.config import Config

EX_DATAERR = 65
EX_TEMPFAIL = 75
RunCoroutine = Callable[[Coroutine[Any, Any, int]], int]


def add_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], tenant_type: Callable[[str], str]
) -> None:
    p = sub.add_parser(
        "ingest-email",
        help="classify a raw email on stdin (reply, auto-reply, bounce) and act on it",
    )
    p.add_argument("--config", "-c", dest="config_sub", help=argparse.SUPPRESS)
    p.add_argument(
        "--tenant",
        type=tenant_type,
        help="the tenant the mailbox belongs to (default: the tenant the message refers to, "
        "else 'default')",
    )


async def _ingest(config: Config, raw: bytes, tenant: str | None, out: TextIO) -> int:
    from seqd.lifecycle import email_inbound
    from seqd.service import open_store

    async with open_store(config) as store:
        result = await email_inbound.ingest(config, store, raw, tenant)
    out.write(msgspec.json.encode(result).decode() + "\n")
    return 0


def run(
    args: argparse.Namespace,
    config: Config,
    runner: RunCoroutine,
    stdin: BinaryIO | None = None,
    out: TextIO | None = None,
) -> int:
    raw = (stdin or sys.stdin.buffer).read()
    if not raw.strip():
        print("seqd: no message on stdin", file=sys.stderr)
        return EX_DATAERR
    try:
        return runner(_ingest(config, raw, args.tenant, out or sys.stdout))
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
        print(f"seqd: store unavailable, try again later: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
