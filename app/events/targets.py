"""Where webhooks may go: the operator's WEBHOOK_ALLOWED_TARGETS, checked when an endpoint is
registered and again on the resolved address at every connect.

Checking only the URL at registration leaves DNS rebinding open (docs/events.md): a name
that resolved to a public address then may resolve to the metadata service later. So the
deliverer's connections go through `guarded_session`, whose connector resolves the host itself,
checks every address, and connects to a checked one. A host allowed by name reaches public
addresses only: whoever controls its DNS must not reach this machine or its networks through it.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp
import httpx
from aiohttp.abc import ResolveResult
from aiohttp.tracing import Trace

from app.config import WebhookTarget

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# In development, when WEBHOOK_ALLOWED_TARGETS is unset: this machine and private networks.
DEVELOPMENT_TARGETS = (
    "127.0.0.0/8",
    "::1/128",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "fc00::/7",
)
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _public(address: Address) -> bool:
    """Whether a name may lead to `address`. Not to loopback, private (RFC 1918, fc00::/7),
    shared (100.64.0.0/10), link-local (the cloud metadata services), unspecified, reserved or
    multicast addresses: only a CIDR or address entry that names them does. Nor to IPv4
    tunnelled in IPv6 (6to4, Teredo), which may carry any of those (`2002:7f00:1::`), nor to
    IPv6's old site-local addresses (`fec0::/10`)."""
    if isinstance(address, ipaddress.IPv6Address) and (
        address.sixtofour or address.teredo or address.is_site_local
    ):
        return False
    return address.is_global and not address.is_multicast and not address.is_reserved


class TargetRefused(Exception):
    """A URL or an address WEBHOOK_ALLOWED_TARGETS does not allow."""


# A host name's addresses (raising OSError when it has none): the seam to DNS.
Resolver = Callable[[str, int], Awaitable[list[str]]]


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


@dataclass(frozen=True)
class TargetPolicy:
    targets: tuple[WebhookTarget, ...]
    resolver: Resolver = field(default=system_resolver, compare=False)

    @classmethod
    def of(cls, entries: Iterable[str], *, resolver: Resolver = system_resolver) -> TargetPolicy:
        return cls(tuple(WebhookTarget.parse(entry) for entry in entries), resolver)

    @classmethod
    def from_settings(
        cls,
        allowed: Sequence[WebhookTarget] | None,
        *,
        production: bool,
        resolver: Resolver = system_resolver,
    ) -> TargetPolicy:
        if allowed:
            return cls(tuple(allowed), resolver)
        return cls.of(() if production else DEVELOPMENT_TARGETS, resolver=resolver)

    def refusal(self, host: str, address: Address, port: int) -> str | None:
        """Why `address`, which `host` resolved to, may not be connected to on `port` (None: it
        may). An IPv4 address written as IPv6 (`::ffff:169.254.169.254`) is judged as the IPv4
        one."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if port == 0:
            return "port 0 is never a target"
        covering = [
            target
            for target in self.targets
            if (target.network is not None and address in target.network)
            or (target.names(host) and _public(address))
        ]
        if any(target.port in (None, port) for target in covering):
            return None
        if covering:
            return f"port {port} of {address} is not in WEBHOOK_ALLOWED_TARGETS"
        if any(target.names(host) for target in self.targets):
            return (
                f"{address} is not in WEBHOOK_ALLOWED_TARGETS: a host allowed by name reaches "
                "public addresses only"
            )
        return f"{address} is not in WEBHOOK_ALLOWED_TARGETS"

    async def check_url(self, url: str) -> None:
        """Refuse a URL the deliverer could not send to: not http(s), or a host that does not
        resolve or resolves to an address outside the allowed targets."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise TargetRefused("must be an http:// or https:// URL with a host")
        if parts.username or parts.password:
            raise TargetRefused("must not carry credentials: endpoints verify the signature")
        try:
            port = parts.port
        except ValueError as exc:
            raise TargetRefused("its port must be a number from 1 to 65535") from exc
        if not self.targets:
            raise TargetRefused(
                "WEBHOOK_ALLOWED_TARGETS allows no target: set it to the hosts "
                "or CIDRs subscribers are at"
            )
        await self.resolve(parts.hostname, _DEFAULT_PORTS[parts.scheme] if port is None else port)

    async def resolve(self, host: str, port: int) -> list[Address]:
        """The host's addresses, each checked; a refusal names the first one refused."""
        try:
            literal: Address | None = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            literal = None
        if literal is not None:
            addresses = [literal]
        else:
            try:
                found = await self.resolver(host, port)
            except (OSError, UnicodeError, ValueError) as exc:  # gaierror; a label too long
                raise TargetRefused(f"{host} does not resolve") from exc
            addresses = list(dict.fromkeys(ipaddress.ip_address(a) for a in found))
            if not addresses:
                raise TargetRefused(f"{host} does not resolve")
        for address in addresses:
            if reason := self.refusal(host, address, port):
                raise TargetRefused(reason)
        return addresses


class _GuardedConnector(aiohttp.TCPConnector):
    """aiohttp's connector, whose every host is resolved by the policy: each address checked,
    and only checked ones connected to. An IP literal goes through it too (aiohttp's own
    lookup passes one by), and nothing is cached: every connect resolves again.
    `tests/events/test_webhooks.py` checks that a refused address is never connected to."""

    def __init__(self, policy: TargetPolicy, *, limit: int) -> None:
        super().__init__(limit=limit, ssl=_ssl_context(), use_dns_cache=False)
        self._policy = policy

    async def _resolve_host(
        self, host: str, port: int, traces: Sequence[Trace] | None = None
    ) -> list[ResolveResult]:
        try:
            addresses = await self._policy.resolve(host, port)
        except TargetRefused as exc:
            # aiohttp raises it as a ClientConnectorError, whose message is the strerror.
            raise OSError(errno.EACCES, f"refused: {exc}") from exc
        # TLS still checks the certificate against `host`: only the address is pinned.
        return [
            {
                "hostname": host,
                "host": str(address),
                "port": port,
                "family": socket.AF_INET6 if address.version == 6 else socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
            for address in addresses
        ]


def guarded_session(policy: TargetPolicy, *, limit: int) -> aiohttp.ClientSession:
    """The deliverer's HTTP client: connections only to addresses the policy allows, no
    cookies kept, no proxy from the environment. (aiohttp rather than httpx, which the rest
    uses: a POST takes about a tenth of the CPU, `bench/http_clients.py`.) Redirects are
    refused per request (`allow_redirects=False`)."""
    return aiohttp.ClientSession(
        connector=_GuardedConnector(policy, limit=limit),
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=None),  # each attempt has its own deadline
        trust_env=False,
    )


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    # Loading the CA bundle takes 25 ms: once per process. The same trust store (certifi's)
    # as the Exotel client's.
    return httpx.create_ssl_context()
