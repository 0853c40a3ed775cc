"""Reading replies, bounces and auto-replies from IMAP mailboxes ([channels.imap]).

One reader per mailbox, each on its own connection: it holds the mailbox's lease in Redis
(one process reads a mailbox at a time), reads each folder's new messages by UID, feeds
each through `email_inbound.ingest` (reply -> pause, DSN -> bounce, auto-reply -> event),
then advances the folder's cursor (UIDVALIDITY and last UID) in Redis. With one folder
and a server that offers IDLE it waits in IDLE; otherwise it polls every `poll_seconds`.

No message is applied twice: a message is remembered by its Message-ID (store/replays.py)
after it is applied and before the cursor moves past it, so the one a crash left behind
the cursor, or one that a new UIDVALIDITY (the folder recreated or rebuilt) numbers anew,
is skipped when it is read again. A mailbox that refuses login, times out or drops is
retried with backoff, its state on /readyz details and `seqd_imap_mailbox_up`; it never
holds up the other mailboxes.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import email
import email.policy
import hashlib
import os
import re
import ssl
from collections.abc import AsyncIterator, Callable
from enum import StrEnum

import aioimaplib
import msgspec
import structlog
from redis.exceptions import RedisError

from seqd.backoff import Backoff
from seqd.config import Config, ImapConfig
from seqd.health import Liveness
from seqd.lifecycle import email_inbound
from seqd.loop import Heart
from seqd.metrics import Metrics
from seqd.store.db import Store
from seqd.times import now_ms

log = structlog.get_logger(__name__)

_UIDVALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]")
_FETCH_UID = re.compile(rb"\bUID (\d+)\b")
# A Message-ID is remembered this long after it was applied (a copy arriving later, a
# folder rebuilt under a new UIDVALIDITY within it, is not applied again).
REMEMBER_SECONDS = 30 * 86_400
# Servers end an IDLE after 30 minutes (RFC 2177); it is renewed well before.
IDLE_RENEW_SECONDS = 25 * 60.0
FIRST_RETRY_SECONDS = 1.0


class State(StrEnum):
    CONNECTING = "connecting"
    IDLE = "idle"
    POLLING = "polling"
    STANDBY = "standby"  # another process holds the mailbox
    RETRYING = "retrying"


class Mailbox(msgspec.Struct, frozen=True):
    """A mailbox to read: `tenant` None reads for the tenant each message names."""

    id: str
    label: str
    tenant: str | None
    imap: ImapConfig


def _mailbox(tenant: str | None, imap: ImapConfig) -> Mailbox:
    label = f"{imap.username}@{imap.host}:{imap.port}"
    digest = hashlib.sha256(label.encode()).hexdigest()[:16]
    return Mailbox(id=digest, label=label, tenant=tenant, imap=imap)


def mailboxes(config: Config) -> list[Mailbox]:
    """Each distinct mailbox of [channels.imap] and [tenants.<name>.channels.imap]; a
    tenant inherits the top-level one, which stays a shared mailbox read once."""
    found: dict[str, Mailbox] = {}
    entries: list[tuple[str | None, ImapConfig | None]] = [(None, config.channels.imap)]
    entries += [(name, t.channels.imap) for name, t in config.tenants.items()]
    for tenant, imap in entries:
        if imap is not None:
            found.setdefault(_mailbox(tenant, imap).id, _mailbox(tenant, imap))
    return list(found.values())


async def sender_mailboxes(store: Store) -> list[Mailbox]:
    """The mailboxes of the email senders added through POST /v1/senders with `imap`
    settings, each read for its sender's tenant."""
    owners = await store.client.hgetall(store.keys.sender_addresses())
    tenants = {str(v).split(" ", 1)[0] for f, v in owners.items() if str(f).startswith("email:")}
    found = []
    for tenant in sorted(tenants):
        for record in await store.senders.all(tenant):
            imap = record.imap
            if record.channel != "email" or imap is None or imap.password is None:
                continue
            settings = ImapConfig(
                host=imap.host,
                port=imap.port,
                tls=imap.tls,
                username=imap.username,
                password=imap.password,
                folders=imap.folders,
                poll_seconds=imap.poll_seconds,
                idle=imap.idle,
                validate_certs=imap.validate_certs,
            )
            found.append(_mailbox(tenant, settings))
    return found


class LeaseLost(Exception):
    """Another process holds the mailbox now."""


class ImapRefused(Exception):
    """The server answered NO or BAD (login, select, fetch)."""


class MailboxReader:
    """Reads one mailbox until stopped; `on_state(label, state, detail)` hears each change."""

    def __init__(
        self,
        config: Config,
        store: Store,
        mailbox: Mailbox,
        *,
        on_state: Callable[[str, State, str], None] | None = None,
        on_message: Callable[[email_inbound.IngestResult], None] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.mailbox = mailbox
        self.imap = mailbox.imap
        self.owner = f"{os.uname().nodename}:{os.getpid()}:{id(self):x}"
        self.on_state = on_state
        self.on_message = on_message
        self.state = State.CONNECTING
        self.backoff = Backoff(FIRST_RETRY_SECONDS, self.imap.retry_max_seconds)
        self.task: asyncio.Task[None] | None = None
        self.reports: set[asyncio.Task[None]] = set()
        self.stopping = False
        # The lease outlives a few missed renewals (one per wait) and a slow message.
        self.lease_ms = int((3 * self.imap.poll_seconds + 2 * self.imap.timeout_seconds) * 1000)

    async def start(self) -> None:
        self.task = asyncio.create_task(self.run(), name=f"imap {self.mailbox.label}")

    async def stop(self) -> None:
        if self.task is None:
            return
        # The flag as well as the cancel: a cancel landing in aioimaplib's own wait_for
        # may come out as a TimeoutError, which the loop would take for a server's.
        self.stopping = True
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        self.task = None
        with contextlib.suppress(RedisError, OSError):
            await self.store.mailboxes.release(self.mailbox.id, self.owner)
            await asyncio.gather(*self.reports)
            if self.state != State.STANDBY:  # (a standby's stop leaves the reader's state)
                await self.store.mailboxes.forget(self.mailbox.label)

    def _set(self, state: State, detail: str = "") -> None:
        if state != self.state or detail:
            log.info("imap.state", mailbox=self.mailbox.label, state=str(state), detail=detail)
            if state != State.STANDBY:  # (the process reading it reports it)
                task = asyncio.create_task(self._report(state, detail))
                self.reports.add(task)
                task.add_done_callback(self.reports.discard)
        self.state = state
        if self.on_state is not None:
            self.on_state(self.mailbox.label, state, detail)

    async def _report(self, state: State, detail: str) -> None:
        """The state in Redis for `seqd status` (best effort: a store down is retried by
        the next change)."""
        with contextlib.suppress(RedisError, OSError):
            await self.store.mailboxes.report(self.mailbox.label, str(state), detail, now_ms())

    async def run(self) -> None:
        while not self.stopping:
            try:
                if not await self.store.mailboxes.hold(self.mailbox.id, self.owner, self.lease_ms):
                    self._set(State.STANDBY)
                    await asyncio.sleep(self.imap.poll_seconds)
                    continue
                self._set(State.CONNECTING)
                await self._session()
            except LeaseLost:
                self._set(State.STANDBY)
            except (aioimaplib.AioImapException, ImapRefused, OSError, TimeoutError) as exc:
                pause = self.backoff.failed()
                why = str(exc) or f"no answer within {self.imap.timeout_seconds:g} s"
                self._set(State.RETRYING, f"{type(exc).__name__}: {why}"[:200])
                await asyncio.sleep(pause)
            except RedisError as exc:
                pause = self.backoff.failed()
                self._set(State.RETRYING, f"store: {type(exc).__name__}")
                await asyncio.sleep(pause)

    def _tls(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        if not self.imap.validate_certs:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    async def _connect(self) -> aioimaplib.IMAP4:
        timeout = self.imap.timeout_seconds
        client: aioimaplib.IMAP4
        if self.imap.tls == "implicit":
            client = aioimaplib.IMAP4_SSL(
                self.imap.host, self.imap.port, timeout=timeout, ssl_context=self._tls()
            )
        else:
            client = aioimaplib.IMAP4(self.imap.host, self.imap.port, timeout=timeout)
        try:
            await client.wait_hello_from_server()
            if self.imap.tls == "starttls":
                await asyncio.wait_for(self._starttls(client), timeout)
            response = await client.login(self.imap.username, self.imap.password)
        except BaseException:
            _close(client)
            raise
        if response.result != "OK":
            _close(client)
            # The server's words only: never the password.
            raise ImapRefused(f"login refused: {_text(response.lines)}")
        return client

    async def _starttls(self, client: aioimaplib.IMAP4) -> None:
        """Upgrade the connection before the login (RFC 3501 6.2.1). aioimaplib knows the
        command but has no method for it: it is sent through the client's protocol, and
        asyncio's `loop.start_tls` wraps the same transport and protocol, which go on
        reading the server's lines, now decrypted. The capabilities are read again, as
        the RFC asks (a server may announce others, LOGINDISABLED gone, after TLS)."""
        protocol = client.protocol
        await protocol.wait("NONAUTH")
        if "STARTTLS" not in protocol.capabilities:
            await protocol.capability()  # (the greeting's may still be on its way)
        if "STARTTLS" not in protocol.capabilities:
            raise ImapRefused("the server does not offer STARTTLS")
        command = aioimaplib.Command("STARTTLS", protocol.new_tag(), loop=protocol.loop)
        response = await protocol.execute(command)
        if response.result != "OK":
            raise ImapRefused(f"STARTTLS refused: {_text(response.lines)}")
        loop = asyncio.get_running_loop()
        transport = await loop.start_tls(
            protocol.transport, protocol, self._tls(), server_hostname=self.imap.host
        )
        if transport is None:
            raise ImapRefused("STARTTLS: no TLS transport")
        protocol.transport = transport
        protocol.capabilities = set()
        await protocol.capability()

    async def _session(self) -> None:
        client = await self._connect()
        try:
            idle = self.imap.idle and len(self.imap.folders) == 1 and client.has_capability("IDLE")
            self._set(State.IDLE if idle else State.POLLING)
            self.backoff.reset()
            while True:
                for folder in self.imap.folders:
                    await self._read(client, folder)
                if not await self.store.mailboxes.hold(self.mailbox.id, self.owner, self.lease_ms):
                    raise LeaseLost
                if self.stopping:
                    return
                if idle:
                    await self._idle(client)
                else:
                    await asyncio.sleep(self.imap.poll_seconds)
        finally:
            if not self.stopping:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.logout(), 2)
            _close(client)

    async def _idle(self, client: aioimaplib.IMAP4) -> None:
        """Until the server reports a change, or poll_seconds (the lease is renewed)."""
        waiting = await client.idle_start(timeout=min(self.imap.poll_seconds, IDLE_RENEW_SECONDS))
        # No `finally`: a stop (cancel) must not wait for the server; the session closes it.
        with contextlib.suppress(TimeoutError):
            await client.wait_server_push(timeout=self.imap.poll_seconds + 5)
        client.idle_done()
        await asyncio.wait_for(waiting, self.imap.timeout_seconds)

    async def _read(self, client: aioimaplib.IMAP4, folder: str) -> None:
        selected = await client.select(folder)
        if selected.result != "OK":
            raise ImapRefused(f"select {folder}: {_text(selected.lines)}")
        validity = _uidvalidity(selected.lines)
        cursor = await self.store.mailboxes.cursor(self.mailbox.id, folder)
        if cursor is None or cursor[0] != validity:
            if cursor is not None:
                log.warning(
                    "imap.uidvalidity_changed",
                    mailbox=self.mailbox.label,
                    folder=folder,
                    before=cursor[0],
                    now=validity,
                )
            uids = await self._search(client, "SINCE", _since(self.imap.lookback_days))
            if not await self.store.mailboxes.advance(
                self.mailbox.id, self.owner, folder, validity, 0
            ):
                raise LeaseLost
            last = 0
        else:
            last = cursor[1]
            uids = await self._search(client, "UID", f"{last + 1}:*")
        for uid in sorted(u for u in uids if u > last):
            await self._apply(client, folder, validity, uid)

    async def _search(self, client: aioimaplib.IMAP4, *criteria: str) -> list[int]:
        response = await client.uid_search(*criteria, charset=None)
        if response.result != "OK":
            raise ImapRefused(f"search: {_text(response.lines)}")
        found: list[int] = []
        for line in response.lines:
            if isinstance(line, bytes | bytearray) and line.startswith(b"SEARCH"):
                found += [int(n) for n in line.split()[1:] if n.isdigit()]
            elif isinstance(line, bytes | bytearray) and line[:1].isdigit():
                found += [int(n) for n in line.split() if n.isdigit()]
        return found

    async def _apply(self, client: aioimaplib.IMAP4, folder: str, validity: int, uid: int) -> None:
        response = await client.uid("fetch", str(uid), "(BODY.PEEK[])")
        if response.result != "OK":
            raise ImapRefused(f"fetch {uid}: {_text(response.lines)}")
        raw = _literal(response.lines)
        if raw is not None:
            seen_key = _seen_key(self.mailbox.id, raw, folder, validity, uid)
            if await self.store.replays.seen(seen_key):
                log.info("imap.seen_before", mailbox=self.mailbox.label, folder=folder, uid=uid)
            else:
                result = await email_inbound.ingest(
                    self.config, self.store, raw, self.mailbox.tenant
                )
                await self.store.replays.remember(seen_key, seconds=REMEMBER_SECONDS)
                log.info(
                    "imap.applied",
                    mailbox=self.mailbox.label,
                    folder=folder,
                    uid=uid,
                    kind=str(result.kind),
                    enrollments=[e.id for e in result.enrollments],
                )
                if self.on_message is not None:
                    self.on_message(result)
        if not await self.store.mailboxes.advance(
            self.mailbox.id, self.owner, folder, validity, uid
        ):
            raise LeaseLost


def _close(client: aioimaplib.IMAP4) -> None:
    """Close the connection whatever state it is in (aioimaplib leaves it open after a
    failed login or a timeout)."""
    transport = getattr(client.protocol, "transport", None)
    if transport is not None:
        transport.close()
    elif not client._client_task.done():
        client._client_task.cancel()


def _text(lines: list[bytes]) -> str:
    return " ".join(bytes(line).decode("utf-8", "replace") for line in lines)[:200]


def _uidvalidity(lines: list[bytes]) -> int:
    for line in lines:
        match = _UIDVALIDITY.search(bytes(line))
        if match:
            return int(match.group(1))
    raise ImapRefused("the server gave no UIDVALIDITY")


def _since(days: int) -> str:
    day = datetime.datetime.now(datetime.UTC).date() - datetime.timedelta(days=days)
    return day.strftime("%d-%b-%Y")


def _literal(lines: list[bytes]) -> bytes | None:
    """The message of a one-message UID FETCH response (aioimaplib hands the literal as a
    bytearray line of its own)."""
    for line in lines:
        if isinstance(line, bytearray):
            return bytes(line)
    return None


def _seen_key(mailbox: str, raw: bytes, folder: str, validity: int, uid: int) -> str:
    """The Message-ID when the message has one, else its place (folder, UIDVALIDITY, UID)."""
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    message_id = str(msg.get("Message-ID", "")).strip()
    if message_id:
        digest = hashlib.sha256(message_id.encode()).hexdigest()[:32]
        return f"imap:{mailbox}:{digest}"
    return f"imap:{mailbox}:{folder}:{validity}:{uid}"


@contextlib.asynccontextmanager
async def part(
    config: Config, store: Store, *, liveness: Heart, observer: Metrics | None = None
) -> AsyncIterator[None]:
    """A reader per mailbox as a background part of `seqd serve` (service.BACKGROUND): the
    config's, and the API senders' (read again every `imap_senders_refresh_seconds`: a
    sender added, changed or deleted starts, restarts or stops its reader); each mailbox's
    state on /readyz details, not gating readiness, and in the metrics."""
    notes = liveness if isinstance(liveness, Liveness) else None
    readers: dict[str, MailboxReader] = {}

    def report(label: str, state: State, detail: str) -> None:
        if notes is not None:
            notes.note(f"imap {label}", f"{state}: {detail}" if detail else str(state))
        if observer is not None:
            up = state in (State.IDLE, State.POLLING, State.STANDBY)
            observer.imap_up.labels(label).set(1 if up else 0)

    def count(result: email_inbound.IngestResult) -> None:
        if observer is not None:
            observer.imap_messages.labels(str(result.kind)).inc()

    async def stop(reader: MailboxReader) -> None:
        await reader.stop()
        if notes is not None:
            notes.note(f"imap {reader.mailbox.label}", None)

    async def sync() -> None:
        wanted = {m.id: m for m in mailboxes(config)}
        for found in await sender_mailboxes(store):
            wanted.setdefault(found.id, found)
        for key, reader in list(readers.items()):
            if wanted.get(key) != reader.mailbox:
                del readers[key]
                await stop(reader)
        for key, one in wanted.items():
            if key not in readers:
                readers[key] = MailboxReader(config, store, one, on_state=report, on_message=count)
                await readers[key].start()

    async def keep_in_sync() -> None:
        every = config.lifecycle.imap_senders_refresh_seconds
        while True:
            await asyncio.sleep(every)
            try:
                await sync()
            except (RedisError, OSError) as exc:
                log.warning("imap.senders_unread", error=f"{type(exc).__name__}: {exc}")

    for one in mailboxes(config):
        readers[one.id] = MailboxReader(config, store, one, on_state=report, on_message=count)
        await readers[one.id].start()
    syncing = asyncio.create_task(keep_in_sync(), name="imap senders")
    try:
        with contextlib.suppress(RedisError, OSError):
            await sync()
        yield
    finally:
        syncing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await syncing
        await asyncio.gather(*(stop(reader) for reader in readers.values()))
