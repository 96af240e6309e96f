"""Where webhooks may go: the operator's WEBHOOK_ALLOWED_TARGETS, checked when an endpoint is
registered and again on the resolved address at every connect.

Checking only the URL at registration leaves DNS rebinding open (docs/events.md): a name
that resolved to a public address then may resolve to the metadata service later. So the
deliverer's connections go through `guarded_session`, whose connector resolves the host itself,
checks every address, and connects to a checked one.
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

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
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
# Never reached through a host allowed by name, only through a CIDR that names them: the cloud
# metadata services live here.
_LINK_LOCAL = (ipaddress.ip_network("169.254.0.0/16"), ipaddress.ip_network("fe80::/10"))


class TargetRefused(Exception):
    """A URL or an address WEBHOOK_ALLOWED_TARGETS does not allow."""


# A host name's addresses (raising OSError when it has none): the seam to DNS.
Resolver = Callable[[str, int], Awaitable[list[str]]]


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


@dataclass(frozen=True)
class TargetPolicy:
    networks: tuple[Network, ...]
    hosts: tuple[str, ...]  # lowercase names; "*.example.com" allows every name under it
    resolver: Resolver = field(default=system_resolver, compare=False)

    @classmethod
    def of(cls, entries: Iterable[str], *, resolver: Resolver = system_resolver) -> TargetPolicy:
        networks, hosts = [], []
        for entry in entries:
            try:
                networks.append(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError:
                hosts.append(entry.strip().lower().rstrip("."))
        return cls(tuple(networks), tuple(hosts), resolver)

    @classmethod
    def from_settings(
        cls,
        allowed: Sequence[str] | None,
        *,
        production: bool,
        resolver: Resolver = system_resolver,
    ) -> TargetPolicy:
        if allowed:
            return cls.of(allowed, resolver=resolver)
        return cls.of(() if production else DEVELOPMENT_TARGETS, resolver=resolver)

    def allows_name(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        return any(
            host == name or (name.startswith("*.") and host.endswith(name[1:]))
            for name in self.hosts
        )

    def refusal(self, host: str, address: Address) -> str | None:
        """Why `address`, which `host` resolved to, may not be connected to (None: it may). An
        IPv4 address written as IPv6 (`::ffff:169.254.169.254`) is judged as the IPv4 one."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if any(address in network for network in self.networks):
            return None
        if self.allows_name(host) and not any(address in net for net in _LINK_LOCAL):
            return None
        return f"{address} is not in WEBHOOK_ALLOWED_TARGETS"

    async def check_url(self, url: str) -> None:
        """Refuse a URL the deliverer could not send to: not http(s), or a host that does not
        resolve or resolves to an address outside the allowed targets."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise TargetRefused("must be an http:// or https:// URL with a host")
        if parts.username or parts.password:
            raise TargetRefused("must not carry credentials: endpoints verify the signature")
        if not self.networks and not self.hosts:
            raise TargetRefused(
                "WEBHOOK_ALLOWED_TARGETS allows no target: set it to the hosts "
                "or CIDRs subscribers are at"
            )
        await self.resolve(parts.hostname, parts.port or 0)

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
            if reason := self.refusal(host, address):
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
