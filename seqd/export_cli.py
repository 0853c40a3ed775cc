"""`seqd export enrollments|events`: an export (seqd/exports.py) into a file, straight from
the store, with a progress bar; `--resume` goes on after the last page written."""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from seqd import event_names, exports, models
from seqd.config import Config
from seqd.cursors import decode_token, encode_token
from seqd.errors import SeqdError
from seqd.service import open_store
from seqd.store.db import Store
from seqd.store.enrollment_search import EnrollmentFilter
from seqd.store.events import EventFilter
from seqd.times import from_rfc3339, now_ms


def add_parser(sub: Any, tenant: Callable[[str], str]) -> None:
    ex = sub.add_parser("export", help="enrollments or events as NDJSON or CSV, into a file")
    ex.add_argument("--config", "-c", dest="config_sub", help=argparse.SUPPRESS)
    ex.add_argument("what", choices=["enrollments", "events"])
    ex.add_argument("--tenant", required=True, type=tenant)
    ex.add_argument("--out", required=True, type=Path, help="the file; its token: FILE.cursor")
    ex.add_argument("--format", choices=["ndjson", "csv"], default="ndjson")
    ex.add_argument("--resume", action="store_true", help="append after FILE.cursor's page")
    ex.add_argument("--sequence-id")
    ex.add_argument("--contact-id")
    ex.add_argument("--status", choices=[s.value for s in models.EnrollmentStatus])
    ex.add_argument("--paused-reason")
    ex.add_argument("--updated-since", type=_time, help="RFC 3339 (enrollments)")
    ex.add_argument("--type", action="append", help="an event type (events; repeatable)")
    ex.add_argument("--since", type=_time, help="RFC 3339 (events)")


def _time(value: str) -> int:
    try:
        return from_rfc3339(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an RFC 3339 time: {value!r}") from None


def cursor_path(out: Path) -> Path:
    return out.with_name(out.name + ".cursor")


def run(
    args: argparse.Namespace, config: Config, run_async: Callable[[Coroutine[Any, Any, int]], int]
) -> int:
    unknown = [t for t in args.type or [] if t not in event_names.KNOWN]
    if unknown:
        print(f"seqd export: unknown event type {unknown[0]!r}", file=sys.stderr)
        return 2
    return run_async(_main(args, config))


async def _main(args: argparse.Namespace, config: Config) -> int:
    console = Console(stderr=True)
    token: str | None = None
    if args.resume:
        saved = cursor_path(args.out)
        if not saved.is_file() or not args.out.is_file():
            console.print(f"seqd export: nothing to resume: no {saved}")
            return 2
        token, _, offset = saved.read_text().strip().partition(" ")
        if not token:
            console.print(f"seqd export: {args.out} is complete")
            return 0
        # What was written after the saved page (cut off before its token was saved) goes.
        with args.out.open("r+b") as out:
            out.truncate(int(offset or 0))
    async with open_store(config) as store:
        if not await store.tenants.exists(args.tenant):
            console.print(f"seqd export: no tenant {args.tenant!r}")
            return 2
        try:
            written = await export(store, config, args, token, console)
        except SeqdError as exc:
            console.print(f"seqd export: {exc.detail}")
            return 2
    print(f"{written} {args.what} written to {args.out}")
    return 0


def _chunks(
    store: Store, config: Config, args: argparse.Namespace, after: str | None
) -> AsyncIterator[exports.Chunk]:
    if args.what == "enrollments":
        where = EnrollmentFilter(
            contact_id=args.contact_id,
            sequence_id=args.sequence_id,
            status=models.EnrollmentStatus(args.status) if args.status else None,
            paused_reason=args.paused_reason,
            updated_since=args.updated_since,
        )
        return exports.enrollments(store, args.tenant, where, args.format, after)
    flt = EventFilter(
        types=frozenset(args.type) if args.type else None,
        enrollment_id=None,
        contact_id=args.contact_id,
        since=args.since,
    )
    retention = config.webhooks.events_retention_hours * 3_600_000
    return exports.events(
        store, args.tenant, flt, args.format, after, now=now_ms(), retention_ms=retention
    )


async def export(
    store: Store, config: Config, args: argparse.Namespace, token: str | None, console: Console
) -> int:
    """Write the export (appending after `token`'s page when resuming); after each page
    FILE.cursor holds the token after it and the file's length then ("" once complete)."""
    columns = exports.ENROLLMENT_COLUMNS if args.what == "enrollments" else exports.EVENT_COLUMNS
    after = decode_token(token, "--resume") if token else None
    chunks = _chunks(store, config, args, after)
    progress = Progress(
        TextColumn(f"exporting {args.what}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    written = 0
    with progress, args.out.open("ab" if token else "wb") as out:
        task = progress.add_task(args.what, total=None)
        if token is None:
            out.write(exports.header(args.format, columns))
        async for chunk in chunks:
            out.write(chunk.body)
            out.flush()
            next_token = encode_token(chunk.cursor)
            cursor_path(args.out).write_text(f"{next_token} {out.tell()}" if next_token else "")
            written += chunk.rows
            progress.advance(task, chunk.rows)
            if chunk.total is not None:
                progress.update(task, total=chunk.total)
    return written
