"""Download images from hostile URLs: checked addresses only, manual redirects, capped streams."""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import socket
import ssl
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy

import httpcore
import httpx

from app.archive.sniff import MAGIC_LENGTH, ImageFormat, SizeReader, sniff_format
from app.core.urls import check_outbound_url, is_forbidden_address, literal_address

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[Sequence[IPAddress]]]

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_HEADERS = {
    "Accept": "image/png, image/jpeg, image/webp",
    "Accept-Encoding": "identity",
    "User-Agent": "imagegen-gateway/0.1",
}
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


class LinkGone(FetchError):
    """The link answered 404 or 410."""

    permanent = True


class TooLarge(FetchError):
    """The body is larger than the policy allows."""

    permanent = True


class NotAnImage(FetchError):
    """The body does not start like a PNG, JPEG or WebP."""

    permanent = True


class TransientFetchError(FetchError):
    """A failure worth retrying later: timeouts, connection errors, 5xx, 429, odd statuses."""


@dataclass(frozen=True)
class ImageInfo:
    """What was downloaded, known once the whole body has streamed."""

    content_type: str
    extension: str
    bytes: int
    sha256: str
    width: int | None
    height: int | None


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


def _timeout(policy: FetchPolicy) -> httpx.Timeout:
    return httpx.Timeout(
        connect=policy.connect_timeout,
        read=policy.read_timeout,
        write=policy.read_timeout,
        pool=policy.connect_timeout,
    )


def create_fetch_client(
    policy: FetchPolicy,
    *,
    resolver: Resolver | None = None,
    network_backend: httpcore.AsyncNetworkBackend | None = None,
    ssl_context: ssl.SSLContext | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.AsyncClient:
    """A client whose every connection goes only to checked addresses. One per process and
    use (image downloads; notifications, with their own `headers`)."""
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
        timeout=_timeout(policy),
        follow_redirects=False,
        trust_env=False,
        headers=_HEADERS if headers is None else headers,
        cookies=CookieJar(DefaultCookiePolicy(allowed_domains=[])),  # keep no cookies
    )
    _CLIENT_POLICIES[client] = policy
    return client


def _checked_url(url: str | httpx.URL, policy: FetchPolicy) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
        _ = parsed.host  # decodes IDNA labels, which fails for some (e.g. "xn--")
        check_outbound_url(str(parsed), allow_private=policy.allow_private, what="image URL")
    except (httpx.InvalidURL, ValueError) as exc:  # UrlPolicyError and UnicodeError included
        raise RefusedUrl(str(exc)) from exc
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise RefusedUrl(f"image URL has an invalid port {parsed.port}")
    return parsed


async def _get(client: httpx.AsyncClient, url: httpx.URL, policy: FetchPolicy) -> httpx.Response:
    request = client.build_request("GET", url, timeout=_timeout(policy))
    try:
        return await client.send(request, stream=True, follow_redirects=False)
    except httpx.TimeoutException as exc:
        raise TransientFetchError(f"{url.host} timed out ({type(exc).__name__})") from exc
    except httpx.TransportError as exc:
        raise TransientFetchError(f"cannot reach {url.host}: {exc}") from exc
    except (httpx.InvalidURL, UnicodeError) as exc:  # httpx prepares redirects it won't follow
        raise RefusedUrl(f"{url.host} redirected to an invalid URL: {exc}") from exc


async def _final_response(
    client: httpx.AsyncClient, url: str, policy: FetchPolicy
) -> httpx.Response:
    current = _checked_url(url, policy)
    for hop in range(policy.max_redirects + 1):
        response = await _get(client, current, policy)
        location = response.headers.get("location")
        if response.status_code not in _REDIRECT_STATUSES or not location:
            return response
        await response.aclose()
        if hop == policy.max_redirects:
            break
        try:
            target = current.join(location)
        except (httpx.InvalidURL, ValueError) as exc:
            raise RefusedUrl(f"{current.host} redirected to an invalid URL: {exc}") from exc
        current = _checked_url(target, policy)
    raise RefusedUrl(f"more than {policy.max_redirects} redirects")


def _check_response(response: httpx.Response, policy: FetchPolicy) -> None:
    host, status = response.url.host, response.status_code
    if status in (404, 410):
        raise LinkGone(f"{host} answered {status}: the link expired or never existed")
    if status != 200:
        raise TransientFetchError(f"{host} answered {status}")
    encoding = response.headers.get("content-encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        raise NotAnImage(f"{host} sent a {encoding}-encoded body")
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > policy.max_bytes:
        raise TooLarge(f"{host} declares {declared} bytes, more than {policy.max_bytes}")


class ImageDownload:
    """An image response whose body is validated, counted and hashed while it streams."""

    def __init__(self, response: httpx.Response, policy: FetchPolicy) -> None:
        self._response = response
        self._policy = policy
        # Network-sized reads, joined into chunk_size pieces by chunks(): httpx's own chunker
        # copies every byte through a growing BytesIO.
        self._raw = response.aiter_raw()
        self._hash = hashlib.sha256()
        self._count = 0
        self._head = b""
        self._format: ImageFormat | None = None
        self._sizes: SizeReader | None = None
        self._started = False
        self._info: ImageInfo | None = None

    @property
    def url(self) -> str:
        """The URL the image came from, after redirects."""
        return str(self._response.url)

    @property
    def content_type(self) -> str:
        """The content type the magic bytes announce (known once opened)."""
        return self._known_format().content_type

    @property
    def extension(self) -> str:
        """The file extension for the content type."""
        return self._known_format().extension

    @property
    def info(self) -> ImageInfo:
        """Size, hash and dimensions; only after chunks() ran to its end."""
        if self._info is None:
            raise RuntimeError("the image was not streamed completely")
        return self._info

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body in pieces of at most about chunk_size bytes; can be iterated once."""
        if self._started:
            raise RuntimeError("chunks() can be iterated only once")
        self._started = True
        image_format, sizes = self._known_format(), self._sizes
        assert sizes is not None
        # Whole network reads joined into pieces of at most chunk_size: one copy per byte.
        limit = self._policy.chunk_size
        pending: list[bytes] = []
        pending_size = 0
        chunk: bytes | None = self._head
        self._head = b""
        while chunk is not None:
            if pending and pending_size + len(chunk) > limit:
                yield b"".join(pending)
                pending, pending_size = [], 0
            start = 0
            while len(chunk) - start > limit:  # a read larger than chunk_size
                yield chunk[start : start + limit]
                start += limit
            if start:
                chunk = chunk[start:]
            if chunk:
                pending.append(chunk)
                pending_size += len(chunk)
            try:
                chunk = await self._next_raw()
            except TooLarge:
                if pending:  # what came within the cap still flows first, as it would have
                    yield b"".join(pending)
                raise
            if chunk is not None:
                sizes.feed(chunk)
        if pending:
            yield b"".join(pending)
            pending.clear()
        width, height = sizes.size or (None, None)
        self._info = ImageInfo(
            content_type=image_format.content_type,
            extension=image_format.extension,
            bytes=self._count,
            sha256=self._hash.hexdigest(),
            width=width,
            height=height,
        )

    async def _sniff(self) -> None:
        """Read just enough of the body to know its format, before anything is handed out."""
        head = bytearray()
        while len(head) < MAGIC_LENGTH:
            chunk = await self._next_raw()
            if chunk is None:
                raise NotAnImage(f"the body has only {len(head)} bytes")
            head += chunk
        self._format = sniff_format(bytes(head[:MAGIC_LENGTH]))
        if self._format is None:
            raise NotAnImage(f"the body starts with {bytes(head[:8])!r}, not PNG, JPEG or WebP")
        self._head = bytes(head)
        self._sizes = SizeReader(self._format)
        self._sizes.feed(self._head)

    async def _next_raw(self) -> bytes | None:
        try:
            chunk = await anext(self._raw)
        except StopAsyncIteration:
            return None
        except httpx.TimeoutException as exc:
            raise TransientFetchError(f"{self._response.url.host} stalled while sending") from exc
        except httpx.TransportError as exc:
            raise TransientFetchError(f"the body broke off: {exc}") from exc
        self._count += len(chunk)
        if self._count > self._policy.max_bytes:
            raise TooLarge(f"the body is larger than {self._policy.max_bytes} bytes")
        self._hash.update(chunk)
        return chunk

    def _known_format(self) -> ImageFormat:
        if self._format is None:
            raise RuntimeError("the download was not opened with open_image()")
        return self._format


@asynccontextmanager
async def open_image(
    client: httpx.AsyncClient, url: str, policy: FetchPolicy
) -> AsyncIterator[ImageDownload]:
    """Follow `url` to a checked 200 image response; FetchError subclasses tell why not."""
    client_policy = _CLIENT_POLICIES.get(client)
    if client_policy is None:
        raise ValueError("open_image() needs a client made by create_fetch_client()")
    if client_policy.allow_private and not policy.allow_private:
        raise ValueError("the client allows private addresses but this policy does not")
    response = await _final_response(client, url, policy)
    try:
        _check_response(response, policy)
        download = ImageDownload(response, policy)
        await download._sniff()
        yield download
    finally:
        await response.aclose()
