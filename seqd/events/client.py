"""The deliverer's HTTP client: pyreqwest, connecting only to addresses the SSRF guard passed.

pyreqwest (reqwest and hyper in Rust, on a runtime thread of its own) costs this process
far less CPU per request than aiohttp (benchmarks/RESULTS.md "webhooks"), as for the `http`
SMS channel. It has no resolver hook, only name-to-address pins fixed when a client is
built; so, unless private targets are allowed, a host name gets a client of its own pinned
to an address `ssrf.GuardedResolver` returned (it refuses a name when any of its addresses
is forbidden). The request still names the host, so Host, SNI and the certificate check are
the name's; the connection goes to the checked address, so a DNS answer that changes after
the check (rebinding) gains nothing. The name is resolved again every `RESOLVE_SECONDS`
(aiohttp's DNS cache time): a client is re-pinned only when its address is no longer in
the answer. Redirects are not followed, so a pinned client never looks up another name.
IP-literal hosts (in every form the URL parser accepts: `2130706433` is 127.0.0.1) are
checked when their URL is first parsed and share one unpinned client, as every URL does
when private targets are allowed.

Every client: no cookie store (a receiver's cookies are never sent back), no proxy from
the environment, no compressed answers asked for, the configured total timeout, TLS
verified against the system's roots, header names sent in lower case (as HTTP/2 does).
"""

from __future__ import annotations

import asyncio
import socket
import time
from datetime import timedelta

from aiohttp.abc import AbstractResolver
from pyreqwest.client import Client, ClientBuilder
from pyreqwest.http import Url

import seqd
from seqd.config import WebhooksConfig
from seqd.events import ssrf

USER_AGENT = f"seqd/{seqd.__version__} (webhooks)"
# A pinned name is resolved (and checked) again after this long.
RESOLVE_SECONDS = 10.0
# Parsed endpoint URLs and pinned host names kept (a few per endpoint over its life).
TARGETS_KEPT = 10_000


class _Pin:
    """A host name's client, connecting only to `address`, checked at `checked`."""

    __slots__ = ("address", "checked", "client")

    def __init__(self, client: Client, address: str) -> None:
        self.client = client
        self.address = address
        self.checked = time.monotonic()


class WebhookClient:
    """Clients for webhook targets: `for_url` gives the client and the parsed URL to send to."""

    def __init__(self, config: WebhooksConfig, resolver: AbstractResolver | None = None) -> None:
        """`resolver` pins host names to its answers (a test's own); by default the guarded
        resolver does unless private targets are allowed."""
        self._config = config
        if resolver is None and not config.allow_private_targets:
            resolver = ssrf.GuardedResolver()
        self._resolver = resolver
        self._shared = self._build(None, "")
        self._urls: dict[str, Url] = {}
        self._pins: dict[str, _Pin] = {}
        # A name being resolved: senders that find its pin stale wait for the same answer.
        self._resolving: dict[str, asyncio.Task[_Pin]] = {}

    def _build(self, host: str | None, address: str) -> Client:
        builder = (
            ClientBuilder()
            .user_agent(USER_AGENT)
            .timeout(timedelta(seconds=self._config.timeout_seconds))
            .follow_redirects(False)
            .referer(False)
            .default_cookie_store(False)
            .no_proxy()
            .gzip(False)
            .brotli(False)
            .zstd(False)
            .deflate(False)
            .http1_lower_case_headers()
            # Idle connections kept: as many as may be in flight at once.
            .pool_max_idle_per_host(self._config.max_in_flight)
        )
        if host is not None:
            # Port 0: the URL's port (or its scheme's) is used.
            builder = builder.resolve(host, address, 0)
        return builder.build()

    def parse(self, url: str) -> Url:
        """An endpoint's URL as the client sends to it, parsed (and an IP literal checked)
        once, not per delivery. Raises Invalid for a malformed URL, ForbiddenTarget for
        a forbidden IP literal."""
        target = self._urls.get(url)
        if target is None:
            ssrf.parse(url)
            target = Url(url)
            if self._resolver is not None and target.domain is None:
                ssrf.check_literal(target.host_str or "")
            if len(self._urls) >= TARGETS_KEPT:
                self._urls.clear()
            self._urls[url] = target
        return target

    async def for_url(self, url: str) -> tuple[Client, Url]:
        """The client to send to `url` with, and the URL. Raises ForbiddenTarget when the
        host is not a public address (unless allowed), OSError when its name does not
        resolve."""
        target = self.parse(url)
        host = target.domain
        if self._resolver is None or host is None:
            return self._shared, target
        pin = self._pins.get(host)
        if pin is None or time.monotonic() - pin.checked > RESOLVE_SECONDS:
            task = self._resolving.get(host)
            if task is None:
                task = self._resolving[host] = asyncio.create_task(self._pin(host, pin))
                task.add_done_callback(self._resolved)
            pin = await asyncio.shield(task)
        return pin.client, target

    def _resolved(self, task: asyncio.Task[_Pin]) -> None:
        self._resolving = {h: t for h, t in self._resolving.items() if t is not task}
        if not task.cancelled():
            # Its waiters raise the error; with none left (cancelled) it is dropped here.
            task.exception()

    async def _pin(self, host: str, old: _Pin | None) -> _Pin:
        assert self._resolver is not None
        # Every family: a name with any forbidden address is refused.
        found = await self._resolver.resolve(host, 0, socket.AF_UNSPEC)
        addresses = [item["host"] for item in found]
        if old is not None and old.address in addresses:
            old.checked = time.monotonic()
            return old
        # Requests in flight on a replaced client finish on it: each holds the client.
        pin = _Pin(self._build(host, addresses[0]), addresses[0])
        if len(self._pins) >= TARGETS_KEPT:
            self._pins.clear()
        self._pins[host] = pin
        return pin

    async def close(self) -> None:
        for task in list(self._resolving.values()):
            task.cancel()
        await self._shared.close()
        for pin in self._pins.values():
            await pin.client.close()
        self._pins.clear()
        if self._resolver is not None:
            await self._resolver.close()
