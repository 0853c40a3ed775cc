"""The `log` channel: every message as one JSON line, to a file or stdout.

The default for both kinds, so that a fresh `seqd serve` sends somewhere with no
credentials; also the crash test's "provider". Each line goes out in one `write(2)` on a
descriptor opened with O_APPEND, so several processes can share the file without
interleaving. A process killed mid-write can still leave a torn line (Linux checks for a
fatal signal at every page a write crosses), so a sender that opens a file whose last byte
is not a newline writes one first: the torn line stays on its own, every later line whole.
"""

from __future__ import annotations

import os
import stat
import sys

import msgspec

from seqd import times
from seqd.channels.base import OutboundMessage, SendResult
from seqd.config import LogChannelConfig


class LogLine(msgspec.Struct, kw_only=True, omit_defaults=True):
    at: str
    key: str
    tenant: str
    enrollment_id: str
    contact_id: str
    sequence_id: str
    step: int
    kind: str
    to: str
    # The sender's address, when the sequence's senders chose one.
    sender: str | None = None
    body: str
    subject: str | None = None
    thread_root: str | None = None
    headers: dict[str, str] = msgspec.field(default_factory=dict)


_encoder = msgspec.json.Encoder()


def _close_torn_line(path: str, fd: int) -> None:
    status = os.fstat(fd)
    if not stat.S_ISREG(status.st_mode) or not status.st_size:
        return  # a pipe or a device has no tail to read
    try:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b"\n"
    except OSError:
        return  # unreadable (write-only permissions): the lines still go out
    if torn:
        os.write(fd, b"\n")


class LogSender:
    name = "log"

    def __init__(self, config: LogChannelConfig) -> None:
        self._path = config.path
        self._fd: int | None = None

    def _descriptor(self) -> int:
        if self._fd is None:
            if self._path == "-":
                self._fd = sys.stdout.fileno()
            else:
                fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    _close_torn_line(self._path, fd)
                except OSError:
                    os.close(fd)
                    raise
                self._fd = fd
        return self._fd

    async def send(self, message: OutboundMessage) -> SendResult:
        line = LogLine(
            at=times.to_rfc3339(times.now_ms()),
            key=message.key,
            tenant=message.tenant,
            enrollment_id=message.enrollment_id,
            contact_id=message.contact_id,
            sequence_id=message.sequence_id,
            step=message.step,
            kind=message.kind,
            to=message.to,
            sender=message.sender.address if message.sender else None,
            body=message.body,
            subject=message.subject,
            thread_root=message.thread_root,
            headers=message.headers,
        )
        data = _encoder.encode(line) + b"\n"
        try:
            fd = self._descriptor()
            if self._path == "-":
                sys.stdout.flush()  # keep order with anything print() buffered
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except OSError as exc:
            # A full disk or a closed stdout is the operator's to fix; the step waits.
            return SendResult(outcome="retry", error=f"log write failed: {exc}")
        return SendResult(outcome="sent", provider_id=message.key)

    async def close(self) -> None:
        if self._fd is not None and self._path != "-":
            os.close(self._fd)
        self._fd = None
