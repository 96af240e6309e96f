"""Where webhooks may go: the operator's WEBHOOK_ALLOWED_TARGETS, checked when an endpoint is
registered and again on the resolved address at every connect.

Checking only the URL at registration leaves DNS rebinding open (shared/webhooks.md): a name
that resolved to a public address then may resolve to the metadata service later. So the
deliverer's connections go through `GuardedTransport`, which resolves the host itself, checks
every address, and connects to a checked one.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import select
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

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
        """Why `address`, which `host` resolved to, may not be connected to (None: it may)."""
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
            except OSError as exc:  # socket.gaierror among them
                raise TargetRefused(f"{host} does not resolve") from exc
            addresses = list(dict.fromkeys(ipaddress.ip_address(a) for a in found))
            if not addresses:
                raise TargetRefused(f"{host} does not resolve")
        for address in addresses:
            if reason := self.refusal(host, address):
                raise TargetRefused(reason)
        return addresses


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """Connects only to addresses the policy allows, resolving the host itself."""

    def __init__(self, policy: TargetPolicy) -> None:
        self._policy = policy
        self._backend = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            addresses = await self._policy.resolve(host, port)
        except TargetRefused as exc:
            raise httpcore.ConnectError(f"refused: {exc}") from exc
        # TLS still checks the certificate against `host`: only the address is pinned.
        stream = await self._backend.connect_tcp(
            str(addresses[0]),
            port,
            timeout=timeout,
            local_address=local_address,
            socket_options=socket_options,
        )
        return _Stream(stream)

    async def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("webhooks are sent over TCP only")

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


class _Stream(httpcore.AsyncNetworkStream):
    """anyio's stream, whose socket is looked up once. Before every request httpcore asks each
    pooled connection whether its socket is readable (closed by the server), and anyio answers
    by building all of the socket's attributes, a `getpeername()` among them: a sixth of the
    deliverer's time (bench/webhooks.py)."""

    def __init__(self, stream: httpcore.AsyncNetworkStream) -> None:
        self._stream = stream
        self._socket: socket.socket = stream.get_extra_info("socket")
        self._readable = select.poll()
        self._readable.register(self._socket, select.POLLIN)

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        return await self._stream.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        await self._stream.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> httpcore.AsyncNetworkStream:
        return _Stream(await self._stream.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        if info == "socket":
            return self._socket
        if info == "is_readable":
            return bool(self._readable.poll(0))
        return self._stream.get_extra_info(info)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport, whose connections go through `_GuardedBackend`. httpx takes no
    network backend, so its connection pool is built again with one; `tests/test_webhooks.py`
    checks that a refused address is never connected to."""

    def __init__(self, policy: TargetPolicy, *, max_connections: int) -> None:
        context = _ssl_context()
        super().__init__(verify=context, trust_env=False)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=context,
            max_connections=max_connections,
            network_backend=_GuardedBackend(policy),
        )


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    # Loading the CA bundle takes 25 ms: once per process, not once per app.
    return httpx.create_ssl_context()
