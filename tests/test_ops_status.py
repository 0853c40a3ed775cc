"""`seqd status`: the one-screen operator view, from Redis alone."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from seqd import cli, models, status
from seqd.metrics import Metrics
from seqd.store.db import Store
from seqd.store.enrollments import EnrollItem
from seqd.times import now_ms
from tests.conftest import ValkeyProcess
from tests.dispatchutil import until


async def seed(store: Store) -> None:
    await store.tenants.create_key("acme")
    await store.tenants.create_key("globex")
    nurture = await store.sequences.create(
        "acme",
        models.SequenceCreate(
            name="Nurture", status="active", steps=[models.StepIn(kind="sms", body="hi")]
        ),
    )
    later = await store.sequences.create(
        "globex",
        models.SequenceCreate(
            name="Later",
            status="active",
            steps=[models.StepIn(kind="sms", wait_minutes=60, body="hi")],
        ),
    )
    items = []
    for i in range(5):
        contact = await store.contacts.create("acme", {"phone": f"+1415555{i:04d}"})
        items.append(EnrollItem(contact_id=contact.id, metadata={}))
    await store.enrollments.enroll("acme", nurture, items)
    contact = await store.contacts.create("globex", {"phone": "+14155559999"})
    await store.enrollments.enroll(
        "globex", later, [EnrollItem(contact_id=contact.id, metadata={})]
    )
    metrics = Metrics()
    metrics.step_sent("sms", "sent", 120)
    metrics.step_sent("email", "failed", 3)
    metrics.webhook_delivery("delivered")
    metrics.webhook_delivery("retry")
    await metrics.rates.flush(store)
    for i in range(4):
        await store.client.xadd(store.keys.intake(), {"n": str(i)})


def screen(value: status.Status, width: int = 140) -> str:
    console = Console(record=True, width=width, file=io.StringIO())
    console.print(status.render(value))
    return console.export_text()


async def test_an_80_column_terminal_reads_it_whole(store: Store) -> None:
    """Nothing cut or wrapped mid-word at 80 columns: the panels stack, every header
    reads whole, and the sequence ids are complete (an operator copies them)."""
    await seed(store)
    value = await status.collect(store)
    text = screen(value, width=80)
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" not in "".join(line for line in text.splitlines() if "seq_" not in line)
    for header in ("channel", "sent/s", "unknown", "webhooks failed (dead letters)", "cancelled"):
        assert header in text, header
    for row in value.sequences:
        assert row.id in text


async def test_collect_and_render(store: Store) -> None:
    await seed(store)
    value = await status.collect(store, now_ms() + 2000)
    assert value.backlog.due == 5 and value.backlog.scheduled == 6
    assert value.backlog.oldest_overdue_seconds >= 2
    assert value.sends.counts["sms"]["sent"] == 120
    assert value.backlog.intake.backlog == 4
    assert [(r.tenant, r.name, r.active) for r in value.sequences] == [
        ("acme", "Nurture", 5),
        ("globex", "Later", 1),
    ]
    text = screen(value)
    for expected in (
        "Due steps",
        "due now 5",
        "scheduled 6",
        "Sends",
        "sms",
        "Queues",
        "webhooks delivered / failed (1 min)  1 / 1",
        "intake backlog",
        "Nurture",
        "globex",
    ):
        assert expected in text, expected
    sms_row = next(line for line in text.splitlines() if " sms " in line)
    assert "120" in sms_row


async def test_busiest_sequences_first_and_the_rest_counted(store: Store) -> None:
    await store.tenants.create_key("acme")
    for i in range(status.SHOWN_SEQUENCES + 3):
        await store.sequences.create(
            "acme",
            models.SequenceCreate(
                name=f"S{i}", status="active", steps=[models.StepIn(kind="sms", body="hi")]
            ),
        )
    value = await status.collect(store)
    assert len(value.sequences) == status.SHOWN_SEQUENCES
    assert value.more_sequences == 3
    assert "and 3 more" in screen(value)


async def test_empty_store_renders(store: Store) -> None:
    text = screen(await status.collect(store))
    assert "due now 0" in text and "oldest overdue 0 ms" in text


async def test_watch_refreshes_in_place_on_a_terminal(store: Store) -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    task = asyncio.create_task(status.show(store, console, watch=0.05))
    await until(lambda: out.getvalue().count("seqd status") >= 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Redrawn several times (cursor moved up over the previous frame).
    assert out.getvalue().count("seqd status") >= 2
    assert "\x1b[" in out.getvalue()


def _env(valkey: ValkeyProcess, prefix: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEQD_")}
    return {**env, "SEQD_REDIS_URL": valkey.url, "SEQD_REDIS_PREFIX": prefix}


def test_cli_prints_one_screen(
    store_url: str,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name in list(os.environ):
        if name.startswith("SEQD_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("SEQD_REDIS_URL", store_url)
    monkeypatch.setenv("SEQD_REDIS_PREFIX", prefix)
    assert cli.main(["status"]) == 0
    out = capsys.readouterr().out
    assert "seqd status" in out and f"prefix {prefix}" in out and "Due steps" in out


def test_cli_watch_until_interrupted(valkey: ValkeyProcess, prefix: str, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    with open(out, "wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "seqd", "status", "--watch", "0.2"],
            env=_env(valkey, prefix),
            stdout=sink,
            stderr=subprocess.STDOUT,
            # A shell's background job starts with SIGINT ignored, and so would the child
            # (Python then raises no KeyboardInterrupt): as in a terminal, it is default.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    try:
        deadline = time.monotonic() + 30
        while out.read_text().count("seqd status") < 2:
            assert process.poll() is None, out.read_text()
            assert time.monotonic() < deadline, out.read_text()
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        assert process.wait(10) == 0, out.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "Traceback" not in out.read_text()


def test_watch_takes_a_sane_interval(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["status", "--watch", "0"])
    assert "SECONDS" in capsys.readouterr().err
    assert cli.parser().parse_args(["status", "--watch"]).watch == 2.0
    assert cli.parser().parse_args(["status"]).watch is None
