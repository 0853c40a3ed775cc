"""The log channel: one JSON line per message, whole lines only, stdout or a file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from seqd.channels.base import OutboundMessage
from seqd.channels.log import LogSender
from seqd.config import LogChannelConfig


def outbound(step: int = 0, **over: object) -> OutboundMessage:
    fields: dict[str, object] = {
        "tenant": "acme",
        "enrollment_id": "enr_01",
        "contact_id": "con_01",
        "sequence_id": "seq_01",
        "step": step,
        "kind": "sms",
        "to": "+15551234567",
        "body": "Hi Ada,\nsee you",
    }
    fields.update(over)
    return OutboundMessage(**fields)  # type: ignore[arg-type]


async def test_each_message_is_one_json_line_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    sender = LogSender(LogChannelConfig(path=str(path)))
    first = await sender.send(outbound(0))
    second = await sender.send(
        outbound(1, kind="email", to="ada@example.com", subject="Hello", thread_root="enr_01.0")
    )
    await sender.close()

    assert first.outcome == "sent" and first.provider_id == "enr_01.0"
    assert second.provider_id == "enr_01.1"
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    one, two = (json.loads(line) for line in lines)
    assert one["key"] == "enr_01.0"
    assert one["body"] == "Hi Ada,\nsee you"
    assert one["to"] == "+15551234567" and one["kind"] == "sms"
    assert one["at"].endswith("Z")
    assert "subject" not in one
    assert two["subject"] == "Hello" and two["thread_root"] == "enr_01.0"


async def test_appends_across_senders_and_reopens(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    for step in range(3):
        sender = LogSender(LogChannelConfig(path=str(path)))
        assert (await sender.send(outbound(step))).outcome == "sent"
        await sender.close()
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [0, 1, 2]


async def test_a_line_torn_by_a_kill_stays_on_its_own(tmp_path: Path) -> None:
    # What a process SIGKILLed between two pages of its write(2) leaves behind.
    path = tmp_path / "out.jsonl"
    whole = json.dumps({"key": "enr_01.0"}) + "\n"
    path.write_text(whole + '{"at":"2026-11-2')
    sender = LogSender(LogChannelConfig(path=str(path)))
    assert (await sender.send(outbound(1))).outcome == "sent"
    await sender.close()
    lines = path.read_text().splitlines()
    assert lines[:2] == [whole.strip(), '{"at":"2026-11-2']
    assert json.loads(lines[2])["key"] == "enr_01.1"
    assert len(lines) == 3


async def test_stdout(capfd: pytest.CaptureFixture[str]) -> None:
    sender = LogSender(LogChannelConfig(path="-"))
    assert (await sender.send(outbound(4))).outcome == "sent"
    await sender.close()
    out = capfd.readouterr().out
    assert json.loads(out.strip())["key"] == "enr_01.4"


async def test_unwritable_path_is_a_retry(tmp_path: Path) -> None:
    sender = LogSender(LogChannelConfig(path=str(tmp_path / "missing" / "out.jsonl")))
    result = await sender.send(outbound())
    assert result.outcome == "retry"
    assert result.error is not None and "log write failed" in result.error
