"""Download images from hostile URLs: checked addresses only, manual redirects, capped streams."""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpcore
import httpx

from app.core.safe_http import (
    FetchError,
    FetchPolicy,
    RefusedUrl,
    Resolver,
    create_safe_client,
    policy_of,
    timeout_for,
)
from app.core.urls import check_outbound_url
from app.storage.sniff import MAGIC_LENGTH, ImageFormat, SizeReader, sniff_format

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_HEADERS = {
    "Accept": "image/png, image/jpeg, image/webp",
    "Accept-Encoding": "identity",
    "User-Agent": "imagegen-gateway/0.1",
}


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


def create_fetch_client(
    policy: FetchPolicy,
    *,
    resolver: Resolver | None = None,
    network_backend: httpcore.AsyncNetworkBackend | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> httpx.AsyncClient:
    """The SSRF-safe client for image downloads (one per process)."""
    return create_safe_client(
        policy,
        resolver=resolver,
        network_backend=network_backend,
        ssl_context=ssl_context,
        headers=_HEADERS,
    )


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
    request = client.build_request("GET", url, timeout=timeout_for(policy))
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
    client_policy = policy_of(client)
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
