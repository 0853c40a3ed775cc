"""`seqd import FILE.csv`: contacts from a spreadsheet, optionally enrolled in a sequence.

Columns are mapped by header: first_name, last_name, phone, email, timezone, external_id;
any other column becomes an attribute (empty cells are left out). Rows go through the
paths the API uses, a chunk at a time: the contact upsert (matched by external_id, then
phone, then email; a row equal to its contact writes nothing) and, with a sequence,
`bulk.enroll` (a contact already in the sequence is left as it is). So importing the same
file twice changes nothing the second time. Rows that cannot be imported are written,
with the reason, to `<FILE>.rejected.csv` next to the input.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from seqd import bulk, models
from seqd.config import Config
from seqd.errors import Invalid, SeqdError, field_error
from seqd.service import open_store
from seqd.store import upserts
from seqd.store.db import Store
from seqd.timing.policy import Policy

CONTACT_COLUMNS = ("first_name", "last_name", "phone", "email", "timezone", "external_id")
# Rows handled per round of store calls.
CHUNK = 500


@dataclass
class Summary:
    rows: int = 0
    contacts: Counter[str] = field(default_factory=Counter)
    enrolled: int = 0
    already_enrolled: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    rejected_path: Path | None = None

    def lines(self) -> list[str]:
        c = self.contacts
        out = [
            f"rows: {self.rows}",
            f"contacts: {c['created']} created, {c['updated']} updated, {c['unchanged']} unchanged",
        ]
        if self.enrolled or self.already_enrolled:
            out.append(f"enrolled: {self.enrolled} new, {self.already_enrolled} already enrolled")
        total = sum(self.rejected.values())
        if total:
            reasons = ", ".join(f"{n} {r}" for r, n in self.rejected.most_common())
            out.append(f"rejected: {total} ({reasons}) -> {self.rejected_path}")
        else:
            out.append("rejected: 0")
        return out


def rejected_path(source: Path) -> Path:
    return source.with_name(source.name + ".rejected.csv")


def row_fields(row: dict[str, str], region: str | None) -> dict[str, Any]:
    """A CSV row as validated, normalised contact fields; Invalid names the bad column."""
    raw: dict[str, Any] = {}
    attributes: dict[str, str] = {}
    for name, value in row.items():
        value = (value or "").strip()
        if not name or not value:
            continue
        if name in CONTACT_COLUMNS:
            raw[name] = value
        else:
            attributes[name] = value
    if attributes:
        raw["attributes"] = attributes
    try:
        body = msgspec.convert(raw, models.ContactCreate)
    except msgspec.ValidationError as exc:
        raise Invalid([field_error(exc)]) from None
    return models.new_contact_fields(body, region)


def _reason(error: SeqdError) -> str:
    if isinstance(error, Invalid):
        return "; ".join(f"{e.path}: {e.message}" for e in error.errors)
    where = error.extra.get("field")
    return f"{where}: {error.detail}" if where else error.detail


class Rejects:
    """The rejected-rows file: the input's columns plus `line` and `reason`, opened on the
    first rejected row (none: no file; an old one from an earlier run is removed)."""

    def __init__(self, path: Path, header: list[str]) -> None:
        self.path = path
        self.extra = ["line", "reason"] if "reason" not in header else ["seqd_line", "seqd_reason"]
        self.header = header + self.extra
        self.writer: Any = None
        self.file: Any = None
        path.unlink(missing_ok=True)

    def add(self, line: int, row: dict[str, str], reason: str) -> None:
        if self.writer is None:
            self.file = self.path.open("w", newline="", encoding="utf-8")
            self.writer = csv.DictWriter(self.file, self.header, extrasaction="ignore")
            self.writer.writeheader()
        self.writer.writerow({**row, self.extra[0]: line, self.extra[1]: reason})

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def _chunks(reader: csv.DictReader[str]) -> Iterator[list[tuple[int, dict[str, str]]]]:
    chunk: list[tuple[int, dict[str, str]]] = []
    for row in reader:
        chunk.append((reader.line_num, row))
        if len(chunk) == CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


async def run(
    store: Store,
    config: Config,
    source: Path,
    tenant: str,
    sequence_id: str | None = None,
    *,
    console: Console | None = None,
) -> Summary:
    """Import `source` into `tenant` (and enroll in `sequence_id`); raises SeqdError when
    the sequence is unknown or not active, before any row is written."""
    region = config.contacts.default_region
    seq = await bulk.active_sequence(store, tenant, sequence_id) if sequence_id else None
    timing = None
    if seq is not None:
        timing = bulk.Timing(Policy(config), await bulk.schedule_of(store, tenant, seq[0]))
    summary = Summary()
    with source.open(newline="", encoding="utf-8-sig") as handle:
        total = sum(1 for _ in csv.DictReader(handle))
    with source.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        rejects = Rejects(rejected_path(source), list(reader.fieldnames or []))
        progress = Progress(
            TextColumn("importing"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console or Console(stderr=True),
            transient=True,
        )
        try:
            with progress:
                task = progress.add_task("rows", total=total)
                for chunk in _chunks(reader):
                    await _chunk(store, tenant, seq, timing, region, chunk, summary, rejects)
                    progress.advance(task, len(chunk))
        finally:
            rejects.close()
    if rejects.writer is not None:
        summary.rejected_path = rejects.path
    return summary


async def _chunk(
    store: Store,
    tenant: str,
    seq: tuple[models.Sequence, int] | None,
    timing: bulk.Timing | None,
    region: str | None,
    chunk: list[tuple[int, dict[str, str]]],
    summary: Summary,
    rejects: Rejects,
) -> None:
    summary.rows += len(chunk)
    good: list[tuple[int, dict[str, str], dict[str, Any]]] = []
    for line, row in chunk:
        try:
            good.append((line, row, row_fields(row, region)))
        except Invalid as exc:
            summary.rejected["invalid"] += 1
            rejects.add(line, row, _reason(exc))
    if not good:
        return
    if seq is None:
        results = await upserts.upsert_many(store, tenant, [fields for _, _, fields in good])
        for (line, row, _), result in zip(good, results, strict=True):
            if isinstance(result, SeqdError):
                summary.rejected["conflict"] += 1
                rejects.add(line, row, _reason(result))
            else:
                summary.contacts[result.change] += 1
        return
    items = [bulk.Item(contact=fields) for _, _, fields in good]
    outcomes = await bulk.enroll(store, tenant, seq[0], seq[1], items, full=False, timing=timing)
    for (line, row, _), outcome in zip(good, outcomes, strict=True):
        if outcome.change:
            summary.contacts[outcome.change] += 1
        if outcome.error is not None:
            summary.rejected[outcome.reason] += 1
            rejects.add(line, row, _reason(bulk.under(outcome.error, "")))
        elif outcome.idempotent:
            summary.already_enrolled += 1
        else:
            summary.enrolled += 1


def main(
    config: Config,
    source: Path,
    tenant: str,
    sequence_id: str | None,
    run_async: Callable[[Coroutine[Any, Any, int]], int],
) -> int:
    """The CLI command: exit 0 when every row was imported, 1 when some were rejected
    (their file is named in the summary), 2 when nothing could start."""
    if not source.is_file():
        Console(stderr=True).print(f"seqd import: no file {source}")
        return 2
    return run_async(_main(config, source, tenant, sequence_id))


async def _main(config: Config, source: Path, tenant: str, sequence_id: str | None) -> int:
    console = Console(stderr=True)
    async with open_store(config) as store:
        if not await store.tenants.exists(tenant):
            # soft_wrap: the command stays on one line, to be copied whole.
            console.print(
                f"seqd import: no tenant {tenant!r} (create one with: seqd keys create "
                f"--tenant {tenant})",
                soft_wrap=True,
            )
            return 2
        try:
            summary = await run(store, config, source, tenant, sequence_id, console=console)
        except SeqdError as exc:
            console.print(f"seqd import: {exc.detail}")
            return 2
        except (UnicodeDecodeError, csv.Error) as exc:
            console.print(f"seqd import: {source} is not a UTF-8 CSV file ({exc})")
            return 2
    for line in summary.lines():
        print(line)
    return 1 if summary.rejected else 0
