"""An HTTP client for hostile URLs: every resolved address is checked when it connects."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import weakref
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy

import httpcore
import httpx

from app.core.urls import IPAddress, is_forbidden_address, literal_address

Resolver = Callable[[str, int], Awaitable[Sequence[IPAddress]]]


_LIMITS = httpx.Limits(max_connections=50, max_keepalive_connections=10, keepalive_expiry=30.0)
# httpcore asks for 64 KiB a read; the event loop hands over up to 256 KiB at once, which anyio
# then slices (copying the rest each time). Asking for more takes each piece whole: a third less
# CPU per downloaded byte.
_MIN_READ = 1024 * 1024


@dataclass(frozen=True)
class FetchPolicy:
    """What a download may do."""

    allow_private: bool = False  # http and private or loopback addresses (dev and tests only)
    max_bytes: int = 50 * 1024 * 1024
    max_redirects: int = 3
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    chunk_size: int = 1024 * 1024  # fewer, larger hand-offs to the store: less CPU per image

    def __post_init__(self) -> None:
        if self.max_bytes < 1 or self.chunk_size < 1 or self.max_redirects < 0:
            raise ValueError("max_bytes and chunk_size must be positive, max_redirects >= 0")


class FetchError(Exception):
    """A download that failed; `permanent` tells whether a retry can help."""

    permanent: bool = False

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RefusedUrl(FetchError):
    """The URL, one of its redirects or the address it resolves to is not allowed."""

    permanent = True


class ForbiddenAddress(RefusedUrl):
    """Every address the host resolves to is one the policy forbids (the reason names them)."""


async def resolve_host(host: str, port: int) -> list[IPAddress]:
    """The addresses the system resolver gives for `host`, in its order, without duplicates."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[IPAddress] = []
    for family, _, _, _, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            address = ipaddress.ip_address(sockaddr[0])
            if address not in addresses:
                addresses.append(address)
    return addresses


class CheckedNetworkBackend(httpcore.AsyncNetworkBackend):
    """Resolves every host itself and connects only to the addresses it checked."""

    def __init__(
        self, *, allow_private: bool, resolver: Resolver, inner: httpcore.AsyncNetworkBackend
    ) -> None:
        self._allow_private = allow_private
        self._resolver = resolver
        self._inner = inner

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Connect to the first allowed address of `host`; TLS later still verifies `host`."""
        try:
            async with asyncio.timeout(timeout):
                addresses = await self._allowed_addresses(host, port)
                return await self._connect_first(addresses, port, local_address, socket_options)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"connecting to {host} timed out") from exc

    async def _allowed_addresses(self, host: str, port: int) -> list[IPAddress]:
        literal = literal_address(host)
        if literal is not None:
            found: Sequence[IPAddress] = [literal]
        else:
            try:
                found = await self._resolver(host, port)
            except UnicodeError as exc:  # a label the IDNA codec refuses, e.g. empty or too long
                raise RefusedUrl(f"{host} is not a valid host name") from exc
            except OSError as exc:
                raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        if not found:
            raise httpcore.ConnectError(f"{host} has no address")
        allowed = [a for a in found if self._allow_private or not is_forbidden_address(a)]
        if not allowed:
            listed = ", ".join(str(a) for a in found)
            raise ForbiddenAddress(f"{host} resolves only to forbidden addresses ({listed})")
        return allowed

    async def _connect_first(
        self,
        addresses: list[IPAddress],
        port: int,
        local_address: str | None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None,
    ) -> httpcore.AsyncNetworkStream:
        options = list(socket_options or ())
        failure: httpcore.ConnectError | None = None
        for address in addresses:
            try:
                stream = await self._inner.connect_tcp(
                    str(address), port, local_address=local_address, socket_options=options
                )
            except httpcore.ConnectError as exc:
                failure = exc
            else:
                return LargeReads(stream)
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Never: downloads go over TCP only."""
        raise RefusedUrl("unix sockets are not allowed")

    async def sleep(self, seconds: float) -> None:
        """Delegate to the wrapped backend."""
        await self._inner.sleep(seconds)


class LargeReads(httpcore.AsyncNetworkStream):
    """A network stream whose reads take whatever the socket has, up to `_MIN_READ` at least."""

    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        """Read at most max(max_bytes, _MIN_READ) bytes."""
        return await self._inner.read(max(max_bytes, _MIN_READ), timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Delegate to the wrapped stream."""
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        """Delegate to the wrapped stream."""
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
    ) -> httpcore.AsyncNetworkStream:
        """Upgrade the wrapped stream; reads stay large."""
        return LargeReads(await self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> object:
        """Delegate to the wrapped stream."""
        return self._inner.get_extra_info(info)


_CLIENT_POLICIES: weakref.WeakKeyDictionary[httpx.AsyncClient, FetchPolicy] = (
    weakref.WeakKeyDictionary()
)


def timeout_for(policy: FetchPolicy) -> httpx.Timeout:
    """The timeouts of one request under `policy`."""
    return httpx.Timeout(
        connect=policy.connect_timeout,
        read=policy.read_timeout,
        write=policy.read_timeout,
        pool=policy.connect_timeout,
    )


def create_safe_client(
    policy: FetchPolicy,
    *,
    resolver: Resolver | None = None,
    network_backend: httpcore.AsyncNetworkBackend | None = None,
    ssl_context: ssl.SSLContext | None = None,
    headers: dict[str, str],
) -> httpx.AsyncClient:
    """A client whose every connection goes only to checked addresses. One per process and
    use (image downloads, notifications), each with its own `headers`."""
    backend = CheckedNetworkBackend(
        allow_private=policy.allow_private,
        resolver=resolver or resolve_host,
        inner=network_backend or httpcore.AnyIOBackend(),
    )
    context = ssl_context or httpx.create_ssl_context(trust_env=False)
    transport = httpx.AsyncHTTPTransport(verify=context, trust_env=False, limits=_LIMITS)
    # httpx has no public setting for the network backend: give the transport a pool using ours.
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=context,
        max_connections=_LIMITS.max_connections,
        max_keepalive_connections=_LIMITS.max_keepalive_connections,
        keepalive_expiry=_LIMITS.keepalive_expiry,
        network_backend=backend,
    )
    client = httpx.AsyncClient(
        transport=transport,
        timeout=timeout_for(policy),
        follow_redirects=False,
        trust_env=False,
        headers=headers,
        cookies=CookieJar(DefaultCookiePolicy(allowed_domains=[])),  # keep no cookies
    )
    _CLIENT_POLICIES[client] = policy
    return client


def policy_of(client: httpx.AsyncClient) -> FetchPolicy | None:
    """The policy `client` was made with, if create_safe_client() made it."""
    return _CLIENT_POLICIES.get(client)
