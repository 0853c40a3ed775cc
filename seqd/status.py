"""`seqd status`: one screen for an operator: what is due, how late, how fast, what waits.

Everything comes from Redis, so it shows the whole deployment whichever process does the
work: backlogs from the keys (`store/backlog.py`), send and webhook rates from the
per-bucket counters every process adds to (`store/rates.py`), per-sequence counts from
the sequences' counters. It works whether or not `seqd serve` runs.
"""

from __future__ import annotations

import asyncio

import msgspec
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from seqd import ids
from seqd.store import backlog
from seqd.store.db import Store
from seqd.store.mailboxes import MailboxState
from seqd.store.rates import WEBHOOK_CHANNEL, SendRates, SendWindow
from seqd.times import now_ms, to_rfc3339

# Rows of the busiest shards and sequences shown: the screen has room for no more.
SHOWN_SHARDS = 8
SHOWN_SEQUENCES = 12
# Sequences read per tenant: bounds the cost of one refresh on a large deployment.
SEQUENCES_PER_TENANT = 200
OUTCOMES = ("sent", "retry", "failed", "unknown")
# Narrower than this, the panels stack: two columns of panels need about 110.
WIDE_COLUMNS = 110


class SequenceRow(msgspec.Struct, kw_only=True):
    tenant: str
    id: str
    name: str
    status: str
    active: int
    paused: int
    completed: int
    cancelled: int


class Status(msgspec.Struct, kw_only=True):
    prefix: str
    backlog: backlog.Snapshot
    sends: SendWindow
    sequences: list[SequenceRow]
    # Sequences not shown (beyond SHOWN_SEQUENCES, or past SEQUENCES_PER_TENANT).
    more_sequences: int = 0
    # IMAP mailboxes as their readers last reported them (seqd/lifecycle/mailbox.py).
    mailboxes: list[MailboxState] = msgspec.field(default_factory=list)


async def _sequences(store: Store) -> tuple[list[SequenceRow], int]:
    tenants = sorted(str(t) for t in await store.client.smembers(store.keys.tenants()))
    rows: list[SequenceRow] = []
    unseen = 0
    for tenant in tenants:
        seqs, _, total = await store.sequences.list(
            tenant, limit=SEQUENCES_PER_TENANT, after=None, status=None
        )
        unseen += total - len(seqs)
        rows += [
            SequenceRow(
                tenant=tenant,
                id=s.id,
                name=s.name,
                status=str(s.status),
                active=s.stats.active,
                paused=s.stats.paused,
                completed=s.stats.completed,
                cancelled=s.stats.cancelled,
            )
            for s in seqs
        ]
    rows.sort(key=lambda r: (-r.active, -r.paused, r.tenant, r.id))
    return rows[:SHOWN_SEQUENCES], unseen + max(0, len(rows) - SHOWN_SEQUENCES)


async def collect(store: Store, at_ms: int | None = None) -> Status:
    at = now_ms() if at_ms is None else at_ms
    snap, sends, (rows, more), mailboxes = await asyncio.gather(
        backlog.read(store, at),
        SendRates(store).window(at),
        _sequences(store),
        store.mailboxes.states(),
    )
    return Status(
        prefix=store.keys.prefix,
        backlog=snap,
        sends=sends,
        sequences=rows,
        more_sequences=more,
        mailboxes=mailboxes,
    )


def _age(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _due(status: Status) -> Panel:
    snap = status.backlog
    late = snap.oldest_overdue_seconds
    head = Text.assemble(
        ("due now ", "bold"),
        (f"{snap.due:,}", "bold red" if snap.due else "bold green"),
        f"   scheduled {snap.scheduled:,}   oldest overdue ",
        (_age(late), "bold red" if late >= 1 else "green"),
    )
    table = Table(box=None, pad_edge=False, header_style="dim")
    for name in ("shard", "scheduled", "due", "oldest overdue"):
        table.add_column(name, justify="right")
    busiest = sorted(snap.shards, key=lambda s: (-s.due, -s.scheduled, s.shard))
    for s in busiest[:SHOWN_SHARDS]:
        age = (snap.at_ms - s.oldest_due_ms) / 1000 if s.oldest_due_ms is not None else None
        table.add_row(
            str(s.shard), f"{s.scheduled:,}", f"{s.due:,}", _age(age) if age is not None else "-"
        )
    if len(snap.shards) > SHOWN_SHARDS:
        table.caption = f"busiest {SHOWN_SHARDS} of {len(snap.shards)} shards"
    return Panel(Group(head, table), title="Due steps", border_style="cyan")


def _sends(status: Status) -> Panel:
    window = status.sends
    table = Table(box=None, pad_edge=False, header_style="dim")
    table.add_column("channel")
    table.add_column("sent/s", justify="right")
    for outcome in OUTCOMES:
        table.add_column(outcome, justify="right")
    channels = sorted(c for c in window.counts if c != WEBHOOK_CHANNEL)
    for channel in channels:
        counts = window.counts[channel]
        table.add_row(
            channel,
            f"{window.per_second(channel):.1f}",
            *(f"{counts.get(o, 0):,}" for o in OUTCOMES),
        )
    if not channels:
        table.add_row("-", "0.0", *("0" for _ in OUTCOMES))
    table.caption = f"last {window.seconds:.0f} s, all processes"
    return Panel(table, title="Sends", border_style="cyan")


def _queues(status: Status) -> Panel:
    snap = status.backlog
    hooks = status.sends.counts.get(WEBHOOK_CHANNEL, {})
    delivered = hooks.get("delivered", 0)
    # A retry is an attempt that failed too; "dropped" (endpoint deleted) is no failure.
    failed = hooks.get("retry", 0) + hooks.get("failed", 0)
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("webhooks queued", f"{snap.webhooks.queued:,}")
    table.add_row("webhooks failed (dead letters)", f"{snap.webhooks.failed:,}")
    table.add_row("webhooks delivered / failed (1 min)", f"{delivered:,} / {failed:,}")
    table.add_row("outbox entries not yet read", f"{snap.outbox.backlog:,}")
    table.add_row("intake backlog", f"{snap.intake.backlog:,}")
    table.add_row("intake rejected", f"{snap.intake_rejected:,}")
    return Panel(table, title="Queues", border_style="cyan")


def _sequence_table(status: Status) -> Panel:
    # One space between columns, and the full id never cut (an operator copies it into a
    # command); the name gives way first when the screen is narrow.
    table = Table(box=None, pad_edge=False, header_style="dim", collapse_padding=True)
    widest = max((len(r.tenant) for r in status.sequences), default=6)
    table.add_column("tenant", overflow="fold", min_width=min(widest, 12))
    table.add_column("sequence", no_wrap=True, min_width=len(ids.new(ids.SEQUENCE)))
    table.add_column("name", overflow="ellipsis")
    table.add_column("status", no_wrap=True)
    for name in ("active", "paused", "done", "cancelled"):  # enrollments, "done": completed
        table.add_column(name, justify="right", no_wrap=True, min_width=len(name))
    for r in status.sequences:
        table.add_row(
            r.tenant,
            r.id,
            r.name[:32],
            r.status,
            f"{r.active:,}",
            f"{r.paused:,}",
            f"{r.completed:,}",
            f"{r.cancelled:,}",
        )
    if status.more_sequences:
        table.caption = f"and {status.more_sequences:,} more (fewer active)"
    return Panel(table, title="Sequences (most active first)", border_style="cyan")


def _mailboxes(status: Status) -> Panel:
    table = Table(box=None, pad_edge=False, header_style="dim")
    table.add_column("mailbox", overflow="fold")
    table.add_column("state", no_wrap=True)
    table.add_column("since", justify="right", no_wrap=True)
    table.add_column("last error", overflow="ellipsis")
    for m in status.mailboxes:
        since = _age(max(0, status.backlog.at_ms - m.at) / 1000) if m.at else "?"
        style = "red" if m.state in ("retrying", "connecting") else ""
        table.add_row(m.label, Text(m.state, style=style), since, m.detail)
    return Panel(table, title="IMAP mailboxes", border_style="cyan")


class Screen:
    """The screen, laid out for the terminal's width: side by side when wide, one panel
    under the other below WIDE_COLUMNS (an 80-column terminal reads it unwrapped)."""

    def __init__(self, status: Status) -> None:
        self.status = status

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        status = self.status
        yield Text.assemble(
            ("seqd status", "bold"),
            f"  prefix {status.prefix}  ",
            (to_rfc3339(status.backlog.at_ms), "dim"),
        )
        if options.max_width >= WIDE_COLUMNS:
            top = Table.grid(expand=True, padding=(0, 1))
            top.add_column(ratio=1)
            top.add_column(ratio=1)
            top.add_row(_due(status), Group(_sends(status), _queues(status)))
            yield top
        else:
            yield from (_due(status), _sends(status), _queues(status))
        yield _sequence_table(status)
        if status.mailboxes:
            yield _mailboxes(status)


def render(status: Status) -> RenderableType:
    return Screen(status)


async def show(store: Store, console: Console, watch: float | None = None) -> None:
    """Print the screen once, or refresh it every `watch` seconds until interrupted."""
    if watch is None:
        console.print(render(await collect(store)))
        return
    if not console.is_terminal:
        # Piped or logged: one full screen after the other, nothing redrawn in place.
        while True:
            console.print(render(await collect(store)))
            console.print()
            await asyncio.sleep(watch)
    with Live(console=console, auto_refresh=False, screen=False) as live:
        while True:
            live.update(render(await collect(store)), refresh=True)
            await asyncio.sleep(watch)
