"""Durable object storage for archived images: one small API over local, cloud and memory stores.

An object that fits in its first part goes up in one atomic put once the stream has ended;
a larger one streams through obstore's multipart upload, which publishes the object only when it
is complete. An interrupted upload is aborted, so `key` never shows a partial object."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import re
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import unquote

import obstore
from obstore.exceptions import BaseError
from obstore.store import AzureStore, GCSStore, LocalStore, MemoryStore, S3Store

if TYPE_CHECKING:
    from obstore import Attributes, PutResult
    from obstore.store import ClientConfig, RetryConfig
    from obstore.store import ObjectStore as Backend

_STORE_ERRORS: Final = (BaseError, OSError)
_MIB: Final = 1024 * 1024
_CLOUD_PART: Final = 5 * _MIB  # the smallest part S3 and GCS accept
_LOCAL_PART: Final = 1 * _MIB
# Objects up to one cloud part are buffered and stored with one put (one request, atomic)
# instead of a multipart upload, on every store: memory stays bounded by one part either way.
_SINGLE_PUT: Final = _CLOUD_PART
_PARTS_IN_FLIGHT: Final = 1  # obstore's bound: at most two parts in flight, the next one filling
_READ_CHUNK: Final = 256 * 1024
_ABORT_GRACE: Final = 10.0  # seconds an interrupted upload may take to abort before we move on
_RETRY: RetryConfig = {"max_retries": 3, "retry_timeout": timedelta(seconds=30)}
# obstore's default 30 s would also cut off a streamed read to a slow client.
_REQUEST_TIMEOUT: Final = timedelta(minutes=5)
_ENV_PREFIX: Final = {"s3": "AWS", "gs": "GOOGLE", "az": "AZURE"}
_SEGMENT: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._=-]*")
_SCHEMES: Final = ("file", "s3", "gs", "az", "memory")
_STAGED: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._=-]*#\d+")  # LocalStore's multipart staging
_pending_aborts: set[asyncio.Future[Any]] = set()


class StoreError(Exception):
    """The object store failed (transient: retry later)."""


class UnknownStorageUrl(ValueError):
    """The URL names no supported store."""


@dataclass(frozen=True)
class StoredObject:
    """What the store knows about one object."""

    key: str
    size: int
    etag: str | None
    content_type: str | None


@dataclass(frozen=True)
class ListedObject:
    """One object of a listing."""

    key: str
    size: int
    last_modified: datetime


class ObjectStore:
    """Keys relative to the URL's prefix; every store failure surfaces as `StoreError`."""

    def __init__(self, backend: Backend, *, scheme: str, label: str) -> None:
        self._backend = backend
        self._scheme = scheme
        self._label = label
        self._signer = backend if isinstance(backend, S3Store | GCSStore | AzureStore) else None
        self._part_size = _CLOUD_PART if self._signer is not None else _LOCAL_PART
        self._single_put = _SINGLE_PUT
        self._has_attributes = not isinstance(backend, LocalStore)

    @classmethod
    def from_url(cls, url: str) -> ObjectStore:
        """Build the store an `IMAGEGEN_STORAGE_URL` names; cloud settings come from the env."""
        scheme, sep, rest = url.partition("://")
        scheme = scheme.lower()
        if not sep or scheme not in _SCHEMES or "?" in rest or "#" in rest:
            raise UnknownStorageUrl(f"unsupported storage URL {url!r}: use one of {_SCHEMES}")
        if scheme == "memory":
            if rest.strip("/"):
                raise UnknownStorageUrl(f"{url!r}: memory:// takes no path")
            return cls(MemoryStore(), scheme=scheme, label="memory://")
        if scheme == "file":
            root = _local_root(url, unquote(rest))
            try:
                root.mkdir(parents=True, exist_ok=True)
                backend: Backend = LocalStore(root)
            except _STORE_ERRORS as exc:
                raise StoreError(f"cannot create the store directory {root}: {_say(exc)}") from exc
            return cls(backend, scheme=scheme, label=f"file://{root}")
        bucket, _, prefix = rest.partition("/")
        prefix = prefix.strip("/")
        if not bucket or (prefix and not _is_key(prefix)):
            raise UnknownStorageUrl(f"{url!r}: expected {scheme}://bucket[/prefix]")
        try:
            backend = _cloud(scheme, bucket, prefix or None)
        except _STORE_ERRORS as exc:
            raise UnknownStorageUrl(f"{url!r}: the store is misconfigured: {_say(exc)}") from exc
        return cls(backend, scheme=scheme, label=f"{scheme}://{bucket}/{prefix}")

    @property
    def scheme(self) -> str:
        """The URL scheme: file, s3, gs, az or memory."""
        return self._scheme

    @property
    def supports_signed_urls(self) -> bool:
        """Whether `signed_url` can hand out direct links (cloud stores)."""
        return self._signer is not None

    async def put_stream(
        self, key: str, chunks: AsyncIterable[bytes], *, content_type: str
    ) -> StoredObject:
        """Upload a stream as `key`, replacing it; visible only once complete, else never.

        An exception from `chunks` (or a cancellation) aborts the upload, then propagates."""
        _check_key(key)
        source = aiter(chunks)
        try:
            head, size, ended = await _first_part(source, self._single_put)
        except BaseException:
            await _close(source)
            raise
        if ended:
            return await self._put_whole(key, head, content_type, size)
        feed = _Feed()
        upload = asyncio.ensure_future(self._upload(key, feed, content_type))
        upload.add_done_callback(feed.close)
        try:
            with contextlib.suppress(_UploadEnded):  # awaiting the upload raises its error
                while head:
                    await feed.send(head.pop(0))
                async for chunk in source:
                    if chunk:
                        await feed.send(chunk if isinstance(chunk, bytes) else bytes(chunk))
                        size += len(chunk)
                await feed.send(_Signal.END)
            result = await asyncio.shield(upload)
        except BaseException:
            head.clear()
            feed.abandon()
            await _settle(upload)
            await _close(source)
            raise
        if not feed.ended:
            raise StoreError(f"put {key!r} on {self._label}: the upload ended before the stream")
        recorded = content_type if self._has_attributes else None
        return StoredObject(key=key, size=size, etag=result["e_tag"], content_type=recorded)

    async def head(self, key: str) -> StoredObject | None:
        """The object's metadata, or None when absent."""
        _check_key(key)
        try:
            found = await obstore.get_async(self._backend, key, options={"head": True})
        except FileNotFoundError:
            return None
        except _STORE_ERRORS as exc:
            raise self._error("head", key, exc) from exc
        return _stored(key, found.meta["size"], found.meta["e_tag"], found.attributes)

    async def open(self, key: str) -> tuple[StoredObject, AsyncIterator[bytes]] | None:
        """The object's metadata and a stream of its bytes, or None when absent."""
        _check_key(key)
        try:
            found = await obstore.get_async(self._backend, key)
        except FileNotFoundError:
            return None
        except _STORE_ERRORS as exc:
            raise self._error("open", key, exc) from exc
        stored = _stored(key, found.meta["size"], found.meta["e_tag"], found.attributes)
        return stored, self._read(key, found.stream(min_chunk_size=_READ_CHUNK))

    async def delete(self, key: str) -> None:
        """Remove the object; absent is fine."""
        _check_key(key)
        try:
            await obstore.delete_async(self._backend, key)
        except FileNotFoundError:
            return
        except _STORE_ERRORS as exc:
            raise self._error("delete", key, exc) from exc

    async def signed_url(self, key: str, expires_in: timedelta) -> str | None:
        """A presigned GET link for cloud stores, None for the others."""
        _check_key(key)
        if expires_in <= timedelta(0):
            raise ValueError("expires_in must be positive")
        if self._signer is None:
            return None
        try:
            return await obstore.sign_async(self._signer, "GET", key, expires_in)
        except _STORE_ERRORS as exc:
            raise self._error("sign", key, exc) from exc

    async def check_writable(self) -> None:
        """Write and delete a small probe object; raises StoreError when the store refuses."""
        key = f"_probe-{uuid.uuid4().hex}"
        try:
            await obstore.put_async(self._backend, key, b"probe")
            await obstore.delete_async(self._backend, key)
        except _STORE_ERRORS as exc:
            raise self._error("write probe", key, exc) from exc

    async def list_keys(self, prefix: str = "") -> list[str]:
        """Every key under `prefix` (whole path segments), sorted; for tests and tooling."""
        prefix = prefix.strip("/")
        if prefix:
            _check_key(prefix)
        keys: list[str] = []
        try:
            async for batch in obstore.list(self._backend, prefix or None):
                keys.extend(meta["path"] for meta in batch)
        except _STORE_ERRORS as exc:
            raise self._error("list", prefix, exc) from exc
        return sorted(keys)

    async def list_batches(self, prefix: str) -> AsyncIterator[list[ListedObject]]:
        """The objects under `prefix` (whole path segments), a batch at a time, in no set order;
        for sweeps over many keys (memory holds one batch)."""
        prefix = prefix.strip("/")
        _check_key(prefix)
        try:
            async for batch in obstore.list(self._backend, prefix):
                yield [
                    ListedObject(meta["path"], meta["size"], meta["last_modified"])
                    for meta in batch
                ]
        except _STORE_ERRORS as exc:
            raise self._error("list", prefix, exc) from exc

    async def remove_abandoned_parts(self, prefix: str, before: datetime) -> int:
        """Delete what uploads interrupted by a killed process left under `prefix`, unseen by any
        listing, when last written before `before`; how many. The file store stages a multipart
        upload in `<key>#<n>` beside the key and only an abort (which a SIGKILL skips) removes
        it. Other stores: 0 (S3 keeps an incomplete multipart upload until a bucket lifecycle
        rule, AbortIncompleteMultipartUpload, ends it; memory dies with the process)."""
        prefix = prefix.strip("/")
        _check_key(prefix)
        if not isinstance(self._backend, LocalStore) or self._backend.prefix is None:
            return 0
        folder = Path(self._backend.prefix) / prefix
        deadline = before.timestamp()

        def remove() -> int:
            removed = 0
            for path in folder.rglob("*#*"):
                if _STAGED.fullmatch(path.name) and path.stat().st_mtime < deadline:
                    path.unlink(missing_ok=True)
                    removed += 1
            return removed

        try:
            return await asyncio.to_thread(remove)
        except OSError as exc:
            raise self._error("remove abandoned parts", prefix, exc) from exc

    async def _put_whole(
        self, key: str, parts: list[bytes], content_type: str, size: int
    ) -> StoredObject:
        """Store a stream that ended within its first part with one atomic put."""
        attributes: Attributes | None = (
            {"Content-Type": content_type} if self._has_attributes else None
        )
        # obstore gathers the chunks itself: no joined copy on the Python heap.
        upload = asyncio.ensure_future(
            obstore.put_async(self._backend, key, parts, attributes=attributes, use_multipart=False)
        )
        try:
            result = await asyncio.shield(upload)
        except _STORE_ERRORS as exc:
            raise self._error("put", key, exc) from exc
        except BaseException:
            await _settle(upload)
            raise
        recorded = content_type if self._has_attributes else None
        return StoredObject(key=key, size=size, etag=result["e_tag"], content_type=recorded)

    async def _upload(self, key: str, feed: _Feed, content_type: str) -> PutResult:
        attributes: Attributes | None = (
            {"Content-Type": content_type} if self._has_attributes else None
        )
        try:
            return await obstore.put_async(
                self._backend,
                key,
                feed,
                attributes=attributes,
                use_multipart=True,
                chunk_size=self._part_size,
                max_concurrency=_PARTS_IN_FLIGHT,
            )
        except _STORE_ERRORS as exc:
            raise self._error("put", key, exc) from exc

    async def _read(self, key: str, stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        try:
            async for chunk in stream:
                yield chunk
        except _STORE_ERRORS as exc:
            raise self._error("read", key, exc) from exc

    def _error(self, operation: str, key: str, exc: BaseException) -> StoreError:
        return StoreError(f"{operation} {key!r} on {self._label} failed: {_say(exc)}")


class _Signal(enum.Enum):
    END = "end"
    ABORT = "abort"


class _UploadAbandoned(Exception):
    """Raised into obstore's reader so that it aborts the multipart upload."""


class _UploadEnded(Exception):
    """The upload stopped reading before the stream ended (it failed)."""


class _Feed:
    """The async iterator obstore reads an upload from, one chunk at a time."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[bytes | _Signal] = asyncio.Queue(maxsize=1)
        self._abandoned = False
        self._closed = False
        self.ended = False

    def __aiter__(self) -> _Feed:
        return self

    async def __anext__(self) -> bytes:
        item = await self._queue.get()
        if self._abandoned or item is _Signal.ABORT:
            raise _UploadAbandoned
        if item is _Signal.END:
            self.ended = True
            raise StopAsyncIteration
        return item

    async def send(self, item: bytes | _Signal) -> None:
        """Wait until the upload takes `item`; raises _UploadEnded if it stopped reading."""
        if self._closed:
            raise _UploadEnded
        await self._queue.put(item)

    def abandon(self) -> None:
        """Make the upload's next read fail, so that obstore aborts it."""
        self._abandoned = True
        self._drain()
        self._queue.put_nowait(_Signal.ABORT)

    def close(self, _upload: object) -> None:
        """The upload finished: release a sender waiting for room."""
        self._closed = True
        self._drain()

    def _drain(self) -> None:
        while not self._queue.empty():
            self._queue.get_nowait()


async def _first_part(source: AsyncIterator[bytes], limit: int) -> tuple[list[bytes], int, bool]:
    """Read `source` until `limit` bytes arrived or it ended: the chunks, their size, ended."""
    head: list[bytes] = []
    size = 0
    async for chunk in source:
        if chunk:
            head.append(chunk if isinstance(chunk, bytes) else bytes(chunk))
            size += len(chunk)
            if size >= limit:
                return head, size, False
    return head, size, True


async def _close(source: AsyncIterator[bytes]) -> None:
    aclose = getattr(source, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(Exception):
            await aclose()


async def _settle(upload: asyncio.Future[Any]) -> None:
    """Give an abandoned upload a moment to abort; past that it finishes in the background."""
    _pending_aborts.add(upload)
    upload.add_done_callback(_forget)
    await asyncio.wait({upload}, timeout=_ABORT_GRACE)


def _forget(upload: asyncio.Future[Any]) -> None:
    _pending_aborts.discard(upload)
    if not upload.cancelled():
        upload.exception()  # retrieved: the caller sees its own exception instead


def _cloud(scheme: str, bucket: str, prefix: str | None) -> Backend:
    """A cloud store; credentials, region and endpoint come from the standard variables."""
    # Explicit client options replace those obstore reads from the environment: restate allow_http.
    allow_http = os.environ.get(f"{_ENV_PREFIX[scheme]}_ALLOW_HTTP", "").strip().lower()
    client: ClientConfig = {
        "allow_http": allow_http in {"1", "true", "yes", "on", "y"},
        "connect_timeout": timedelta(seconds=5),
        "timeout": _REQUEST_TIMEOUT,
    }
    if scheme == "s3":
        return S3Store(bucket, prefix=prefix, client_options=client, retry_config=_RETRY)
    if scheme == "gs":
        return GCSStore(bucket, prefix=prefix, client_options=client, retry_config=_RETRY)
    return AzureStore(bucket, prefix=prefix, client_options=client, retry_config=_RETRY)


def _local_root(url: str, path: str) -> Path:
    """`file:///abs/dir` or `file://./relative/dir` (resolved against the working directory)."""
    if path.startswith("/"):
        return Path(path).resolve()
    if path == "." or path.startswith("./"):
        return (Path.cwd() / path).resolve()
    raise UnknownStorageUrl(f"{url!r}: expected file:///absolute/dir or file://./relative/dir")


def _stored(key: str, size: int, etag: str | None, attributes: Attributes) -> StoredObject:
    return StoredObject(key=key, size=size, etag=etag, content_type=attributes.get("Content-Type"))


def _is_key(key: str) -> bool:
    return len(key) <= 1024 and all(_SEGMENT.fullmatch(part) for part in key.split("/"))


def _check_key(key: str) -> None:
    if not _is_key(key):
        raise ValueError(f"invalid object key {key!r}: use segments of [A-Za-z0-9._=-] joined by /")


def _say(exc: BaseException) -> str:
    """One line about a failure, without obstore's debug dump or any URL query (signatures)."""
    text = str(exc).split("\n\nDebug source:", 1)[0]
    text = re.sub(r"(https?://[^\s?]*)\?\S*", r"\1?…", " ".join(text.split()))
    return f"{type(exc).__name__}: {text[:400]}"
