"""The `smtp` channel: email through a pool of persistent aiosmtplib sessions.

`pool_size` sessions, each carrying many messages (MAIL, RCPT, DATA per message; RSET
after a refused one), connected on first use and reconnected after any failure; a session
idle for a while is probed with NOOP before use, since servers drop idle clients.

Outcomes follow where the transaction was when it went wrong: before DATA the server
cannot have the message (refused connection, timeout, 4xx → `retry`); once DATA was sent,
a timeout or a dropped connection may hide a delivery (→ `unknown`); a 5xx answer is
`failed`. A session that turns out dead at MAIL after sitting in the pool is replaced and
the message tried once more on the fresh one: nothing can have been delivered, and
waiting a whole backoff for a server's idle timeout would be silly.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import aiosmtplib

from seqd.channels import mime
from seqd.channels.base import OutboundMessage, SendResult
from seqd.config import SmtpConfig

# A session idle longer than this gets a NOOP before it carries a message; most servers
# drop idle clients after 60-300 s, so this catches the drop without a NOOP per message.
_PROBE_AFTER_IDLE_SECONDS = 30.0


@dataclass
class _Session:
    client: aiosmtplib.SMTP | None = None
    last_used: float = field(default_factory=time.monotonic)


class _NotSent(Exception):
    """Failed before DATA: carries the outcome to report, and whether a fresh session may help."""

    def __init__(self, result: SendResult, stale: bool = False) -> None:
        super().__init__(result.error)
        self.result = result
        self.stale = stale


class SmtpSender:
    name = "smtp"

    def __init__(self, config: SmtpConfig) -> None:
        self._config = config
        # Last in, first out: light traffic keeps reusing one warm session instead of
        # opening all pool_size of them; the rest connect only when sends overlap.
        self._idle: asyncio.LifoQueue[_Session] = asyncio.LifoQueue()
        for _ in range(config.pool_size):
            self._idle.put_nowait(_Session())
        self._local_hostname: str | None = None
        self._closed = False

    def _new_client(self) -> aiosmtplib.SMTP:
        c = self._config
        return aiosmtplib.SMTP(
            hostname=c.host,
            port=c.port,
            username=c.username or None,
            password=c.password if c.username else None,
            use_tls=c.tls == "implicit",
            start_tls=c.tls == "starttls",
            validate_certs=c.validate_certs,
            timeout=c.timeout_seconds,
            # socket.getfqdn() once per sender, not once per connection.
            local_hostname=self._local_hostname,
        )

    async def _connect(self, session: _Session) -> aiosmtplib.SMTP:
        """A connected client for `session`; raises _NotSent when the server cannot be reached."""
        client = session.client
        if client is not None and client.is_connected:
            if time.monotonic() - session.last_used < _PROBE_AFTER_IDLE_SECONDS:
                return client
            try:
                await client.noop()
                return client
            except (aiosmtplib.SMTPException, OSError):
                client.close()
        session.client = None
        client = self._new_client()
        try:
            await client.connect()
        except aiosmtplib.SMTPAuthenticationError as exc:
            # Our credentials, not this message: retry, so an operator can fix them in time.
            raise _NotSent(_retry(f"smtp login refused: {exc.code} {exc.message}")) from None
        except aiosmtplib.SMTPResponseException as exc:
            raise _NotSent(_retry(f"smtp connect refused: {exc.code} {exc.message}")) from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise _NotSent(_retry(f"smtp cannot connect: {type(exc).__name__}: {exc}")) from None
        self._local_hostname = client.local_hostname
        session.client = client
        return client

    async def send(self, message: OutboundMessage) -> SendResult:
        c = self._config
        sender = message.sender
        from_address = c.from_address if sender is None else sender.address
        from_name = c.from_name if sender is None else sender.name or None
        try:
            msg = mime.build(message, from_address, from_name)
        except mime.Refused as exc:
            return SendResult(outcome="failed", error=f"smtp: {exc}")
        data = mime.to_bytes(msg)
        message_id = str(msg["Message-ID"])  # a header object (str subclass) does not encode
        utf8 = mime.needs_utf8(from_address, message.to)
        session = await self._idle.get()
        try:
            fresh = session.client is None or not session.client.is_connected
            try:
                return await self._transact(
                    session, from_address, message.to, data, message_id, utf8
                )
            except _NotSent as exc:
                if not exc.stale or fresh:
                    return exc.result
            # The pooled session was dead at MAIL: nothing was delivered; once more, fresh.
            try:
                return await self._transact(
                    session, from_address, message.to, data, message_id, utf8
                )
            except _NotSent as exc:
                return exc.result
        finally:
            session.last_used = time.monotonic()
            if self._closed and session.client is not None:
                session.client.close()
                session.client = None
            self._idle.put_nowait(session)

    async def _transact(
        self,
        session: _Session,
        from_address: str,
        to: str,
        data: bytes,
        message_id: str,
        utf8: bool,
    ) -> SendResult:
        client = await self._connect(session)
        options = []
        if client.supports_extension("size"):
            options.append(f"SIZE={len(data)}")
        if utf8:
            if not client.supports_extension("smtputf8"):
                return SendResult(
                    outcome="failed", error="smtp: address needs SMTPUTF8, server lacks it"
                )
            options.append("SMTPUTF8")
        encoding = "utf-8" if utf8 else "ascii"
        try:
            await client.mail(from_address, options=options, encoding=encoding)
            await client.rcpt(to, encoding=encoding)
        except aiosmtplib.SMTPResponseException as exc:
            await _reset(client)
            raise _NotSent(_by_code("smtp refused", exc.code, exc.message)) from None
        except ValueError as exc:
            # aiosmtplib's own address checks (a control character): permanent.
            await _reset(client)
            return SendResult(outcome="failed", error=f"smtp: address not valid: {exc}")
        except (aiosmtplib.SMTPServerDisconnected, ConnectionError) as exc:
            session.client = None
            raise _NotSent(_retry(f"smtp disconnected before DATA: {exc}"), stale=True) from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            client.close()
            session.client = None
            raise _NotSent(_retry(f"smtp before DATA: {type(exc).__name__}: {exc}")) from None
        try:
            await client.data(data)
        except aiosmtplib.SMTPResponseException as exc:
            await _reset(client)
            return _by_code("smtp refused the message", exc.code, exc.message)
        except (aiosmtplib.SMTPException, OSError) as exc:
            # DATA went out; the server may have queued the message before we lost it.
            client.close()
            session.client = None
            return SendResult(
                outcome="unknown", error=f"smtp after DATA: {type(exc).__name__}: {exc}"
            )
        return SendResult(outcome="sent", provider_id=message_id)

    async def close(self) -> None:
        """QUIT idle sessions now; a session in use is closed when its send returns."""
        self._closed = True
        idle = [self._idle.get_nowait() for _ in range(self._idle.qsize())]
        clients = [s.client for s in idle if s.client is not None]
        for session in idle:
            session.client = None
            self._idle.put_nowait(session)
        await asyncio.gather(*(_quit(client) for client in clients))


def _retry(error: str) -> SendResult:
    return SendResult(outcome="retry", error=error)


def _by_code(what: str, code: int, text: str) -> SendResult:
    error = f"{what}: {code} {text}"
    if 400 <= code < 500:
        return SendResult(outcome="retry", error=error)
    if code >= 500:
        return SendResult(outcome="failed", error=error)
    # Not an error code at all (a confused server): the message did not go; try later.
    return SendResult(outcome="retry", error=error)


async def _quit(client: aiosmtplib.SMTP) -> None:
    if not client.is_connected:
        return
    try:
        await client.quit()
    except (aiosmtplib.SMTPException, OSError):
        client.close()


async def _reset(client: aiosmtplib.SMTP) -> None:
    """Clear a refused transaction so the session can carry the next message."""
    try:
        await client.rset()
    except (aiosmtplib.SMTPException, OSError):
        client.close()
