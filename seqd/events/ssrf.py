"""The SSRF guard: webhooks go to public addresses only, unless the config allows more.

A tenant chooses its endpoint URLs, so without a guard it could make seqd POST into the
network seqd runs in (a metadata service, a database's HTTP port). The URL is checked when
the endpoint is saved (a clear 422) and again at every delivery, where the check sits in
the resolver whose answer the deliverer's client is pinned to (seqd/events/client.py):
the addresses checked are the addresses connected to, so a DNS answer that changes
between check and connect (rebinding) gains nothing.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from seqd.errors import Invalid

SCHEMES = ("http", "https")
# A name that does not resolve within this long is refused at save time.
RESOLVE_TIMEOUT_SECONDS = 5.0


class ForbiddenTarget(OSError):
    """The target resolves to an address webhooks may not reach."""


# NAT64 (RFC 6052): the well-known prefix carries the IPv4 in its last 32 bits; the
# local-use prefix (RFC 8215) is the operator's own network, never a public target.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_TEREDO = ipaddress.ip_network("2001::/32")


def _embedded(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 form reaches (mapped, 6to4, NAT64), if it is one."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def forbidden(address: str) -> bool:
    """True for loopback, link-local, private, multicast, unspecified and other non-public,
    and for an IPv6 form (6to4, NAT64, mapped) of such an IPv4 address. Teredo and local
    NAT64 are tunnels into networks seqd cannot judge: always refused."""
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _TEREDO or ip in _NAT64_LOCAL:
            return True
        ip = _embedded(ip) or ip
    return (
        not ip.is_global
        or ip.is_multicast
        or ip.is_unspecified
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_private
        or ip.is_reserved
    )


def _literal(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host.strip("[]").split("%", 1)[0]))
    except ValueError:
        return None


def check_literal(host: str) -> None:
    """Refuse an IP-literal host (a client connects to literals without asking the resolver)."""
    literal = _literal(host)
    if literal is not None and forbidden(literal):
        raise ForbiddenTarget(f"{host} is not a public address")


def parse(url: str) -> URL:
    """The URL if it can be a webhook target; Invalid naming `url` otherwise."""
    try:
        parsed = URL(url)
        port = parsed.port
    except (ValueError, TypeError):
        raise Invalid.field("url", "not a valid URL") from None
    if parsed.scheme not in SCHEMES:
        raise Invalid.field("url", "must be an http:// or https:// URL")
    if not parsed.host or port is None:
        raise Invalid.field("url", "needs a host")
    if parsed.fragment:
        raise Invalid.field("url", "must not have a #fragment")
    return parsed


async def check(url: str, *, allow_private: bool) -> None:
    """Refuse (Invalid naming `url`) a URL that is malformed or reaches a non-public address."""
    parsed = parse(url)
    if allow_private:
        return
    host = str(parsed.host)
    hint = " (set webhooks.allow_private_targets to allow it)"
    try:
        check_literal(host)
    except ForbiddenTarget:
        raise Invalid.field("url", f"{host} is not a public address{hint}") from None
    if _literal(host) is not None:
        return
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, parsed.port, type=socket.SOCK_STREAM),
            RESOLVE_TIMEOUT_SECONDS,
        )
    except (OSError, TimeoutError):
        raise Invalid.field("url", f"{host} does not resolve") from None
    for info in infos:
        address = str(info[4][0])
        if forbidden(address):
            raise Invalid.field(
                "url", f"{host} resolves to {address}, not a public address{hint}"
            ) from None


class GuardedResolver(AbstractResolver):
    """A resolver (aiohttp's threaded one unless given) refusing a name when any of its
    addresses is forbidden."""

    def __init__(self, inner: AbstractResolver | None = None) -> None:
        self._inner = inner or ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        for item in found:
            if forbidden(item["host"]):
                raise ForbiddenTarget(f"{host} resolves to {item['host']}, not a public address")
        return found

    async def close(self) -> None:
        await self._inner.close()


def resolver(*, allow_private: bool) -> AbstractResolver:
    """The resolver for a webhook client: guarded unless private targets are allowed."""
    return ThreadedResolver() if allow_private else GuardedResolver()
