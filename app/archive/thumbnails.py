"""Thumbnails of stored images: one small WebP per image, made on the console's first request
for it (never at archive time: issue 17), stored beside the image.

They are for the console only, and most images are never viewed there; made at archive time they
were a large share of every task's CPU. Stored bodies are hostile input. Only objects of at most
MAX_SOURCE_BYTES (5 MiB) are read back and decoded, and only when the pixel count (the header, as
recorded) fits the decode budget (app/archive/decoding.py). Decoding runs in a child process, one
at a time per service process, under a deadline: a decode that passes it (a hostile image, a
decoder bug) gets its process killed, which frees the slot and the CPU, and the next thumbnail
starts a fresh process. A thumbnail that cannot be made is a reason, shown as a placeholder."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Final

from app.archive.decoding import (
    ANSWER,
    READY,
    REFUSED,
    REQUEST,
    THUMBNAIL,
    ThumbnailRefused,
    check_pixels,
    pillow_format,
)
from app.storage.store import ObjectStore

THUMBNAIL_CONTENT_TYPE: Final = "image/webp"
# The largest object read back into memory to be decoded (one cloud part); larger ones get none.
MAX_SOURCE_BYTES: Final = 5 * 1024 * 1024
THUMBNAILS_AT_ONCE: Final = 1  # decoder processes per service process: the budget holds per one
# The largest allowed image decodes in well under a second; ten leave room for a loaded host.
DECODE_DEADLINE: Final = timedelta(seconds=10)
# The longest a request waits for a free decoder (a page of new images fills in one after another).
SLOT_WAIT: Final = timedelta(seconds=30)
START_DEADLINE: Final = timedelta(seconds=30)  # the decoder process's start (Pillow's import)
DECODER_COMMAND: Final = (sys.executable, "-m", "app.archive.decoding")


def thumbnail_key(image_key: str) -> str:
    """Where the thumbnail of the image at `image_key` lives (the same for every attempt)."""
    return f"{image_key}.thumb.webp"


@dataclass(frozen=True, slots=True)
class ThumbnailResult:
    """What became of an image's thumbnail: its key, or why there is none."""

    key: str | None
    error: str | None


class Decoder:
    """A decoder process making one thumbnail at a time: started on first use, killed when a
    decode passes `deadline` or the process misbehaves, started afresh on the next use."""

    def __init__(self, deadline: timedelta, command: Sequence[str]) -> None:
        self._deadline = deadline.total_seconds()
        self._command = tuple(command)
        self._process: asyncio.subprocess.Process | None = None

    async def thumbnail(self, body: bytes, content_type: str) -> bytes:
        """The WebP thumbnail of `body`; ThumbnailRefused says why there is none."""
        process = await self._started()
        assert process.stdin is not None
        assert process.stdout is not None
        encoded = content_type.encode()
        try:
            async with asyncio.timeout(self._deadline):
                process.stdin.write(REQUEST.pack(len(encoded), len(body)) + encoded)
                process.stdin.write(body)
                await process.stdin.drain()
                status, length = ANSWER.unpack(await process.stdout.readexactly(ANSWER.size))
                payload = await process.stdout.readexactly(length)
        except TimeoutError:
            await self._stop()
            raise ThumbnailRefused(
                f"decoding took longer than {self._deadline:g} s; the decoder was stopped"
            ) from None
        except (asyncio.IncompleteReadError, ConnectionError):
            code = await self._stop()
            raise ThumbnailRefused(f"the decoder process died (exit status {code})") from None
        except BaseException:  # cancelled halfway: what the process would answer next is unknown
            await self._stop()
            raise
        if status == THUMBNAIL:
            return payload
        if status == REFUSED:
            raise ThumbnailRefused(payload.decode(errors="replace"))
        await self._stop()
        raise ThumbnailRefused(f"the decoder process answered status {status}")

    async def aclose(self) -> None:
        """Let the process end (its input ends), killing it if it does not at once."""
        process = self._process
        if process is None:
            return
        assert process.stdin is not None
        process.stdin.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1):
                await process.wait()
        await self._stop()

    async def _started(self) -> asyncio.subprocess.Process:
        if self._process is not None and self._process.returncode is None:
            return self._process
        await self._stop()  # one that ended while idle
        try:
            self._process = await asyncio.create_subprocess_exec(
                *self._command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
            )
        except OSError as exc:  # no process to be had (out of memory or process slots)
            raise DecoderUnavailable(f"cannot start the decoder process: {exc}") from None
        assert self._process.stdout is not None
        try:
            async with asyncio.timeout(START_DEADLINE.total_seconds()):
                ready = await self._process.stdout.readexactly(len(READY))
        except (TimeoutError, asyncio.IncompleteReadError):
            code = await self._stop()
            raise DecoderUnavailable(
                f"the decoder process did not start (exit status {code})"
            ) from None
        except BaseException:
            await self._stop()
            raise
        if ready != READY:
            await self._stop()
            raise DecoderUnavailable("the decoder process did not start (it said something else)")
        return self._process

    async def _stop(self) -> int | None:
        """Kill the process (if any, if still running) and wait for it; its exit status."""
        process, self._process = self._process, None
        if process is None:
            return None
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        return await process.wait()


class DecoderUnavailable(Exception):
    """No decoder process could be started: the host's state, not the image's (not recorded
    against it; a later request tries again)."""


class Thumbnailer:
    """Makes and stores thumbnails, a bounded number at a time, each in a decoder process with
    a deadline. One per service process; `aclose()` ends its decoder processes."""

    def __init__(
        self,
        store: ObjectStore,
        at_once: int = THUMBNAILS_AT_ONCE,
        *,
        deadline: timedelta = DECODE_DEADLINE,
        command: Sequence[str] = DECODER_COMMAND,
    ) -> None:
        self._store = store
        self._decoders = [Decoder(deadline, command) for _ in range(at_once)]
        self._idle: asyncio.Queue[Decoder] = asyncio.Queue()  # the free slots
        for decoder in self._decoders:
            self._idle.put_nowait(decoder)
        # The thumbnails being made, by key: later requests for one share its decode.
        self._making: dict[str, asyncio.Future[ThumbnailResult | None]] = {}

    async def thumbnail_of(
        self, image_key: str, content_type: str, size: tuple[int | None, int | None]
    ) -> ThumbnailResult | None:
        """Make the thumbnail of the object stored at `image_key` and store it at
        `thumbnail_key(image_key)`. None when the object is not in the store; a result with an
        `error` when no thumbnail is made of it (too large, past the pixel budget, not decodable,
        past the deadline, the decoder process failing: kept by callers, as the archive kept
        them, so that a hostile image costs a decode once). Raises StoreError when the store
        fails (reading or writing): that says nothing about the image, so a later request may
        try again; DecoderUnavailable when no decoder process can be started, or none is free
        within SLOT_WAIT, for the same reason.

        Requests for one image while its thumbnail is being made share that one decode (in
        this process; another replica may make it too: same key, same bytes). A body is read
        only once a decoder is free, so waiting requests hold no image in memory, and the
        store is asked first whether an earlier request made the thumbnail meanwhile."""
        key = thumbnail_key(image_key)
        pending = self._making.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._make(image_key, content_type, size))
            self._making[key] = pending
            pending.add_done_callback(lambda _: self._making.pop(key, None))
        return await asyncio.shield(pending)

    async def _make(
        self, image_key: str, content_type: str, size: tuple[int | None, int | None]
    ) -> ThumbnailResult | None:
        key = thumbnail_key(image_key)
        try:
            width, height = size
            if width is not None and height is not None:  # the header, as the copy read it
                check_pixels(pillow_format(content_type), width, height)
            try:
                async with asyncio.timeout(SLOT_WAIT.total_seconds()):
                    decoder = await self._idle.get()
            except TimeoutError:
                raise DecoderUnavailable(
                    f"every decoder was busy for {SLOT_WAIT.total_seconds():g} s"
                ) from None
            try:
                if await self._store.head(key) is not None:  # made while this one waited
                    return ThumbnailResult(key=key, error=None)
                body = await _small_body(self._store, image_key)
                if body is None:
                    return None
                data = await decoder.thumbnail(body, content_type)
                del body
            finally:
                self._idle.put_nowait(decoder)
        except ThumbnailRefused as exc:
            return ThumbnailResult(key=None, error=str(exc)[:200])
        await self._store.put_stream(key, _once(data), content_type=THUMBNAIL_CONTENT_TYPE)
        return ThumbnailResult(key=key, error=None)

    async def aclose(self) -> None:
        """End the decoder processes (a later thumbnail would start them again)."""
        for decoder in self._decoders:
            await decoder.aclose()


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _small_body(store: ObjectStore, key: str) -> bytes | None:
    """The object's bytes, None when there is no such object; ThumbnailRefused when it is
    longer than MAX_SOURCE_BYTES (reading stops at the limit)."""
    opened = await store.open(key)
    if opened is None:
        return None
    stored, chunks = opened
    kept: list[bytes] = []
    size = 0
    try:
        if stored.size > MAX_SOURCE_BYTES:
            raise ThumbnailRefused(f"the image is larger than {MAX_SOURCE_BYTES} bytes")
        async for chunk in chunks:
            size += len(chunk)
            if size > MAX_SOURCE_BYTES:
                raise ThumbnailRefused(f"the image is larger than {MAX_SOURCE_BYTES} bytes")
            kept.append(chunk)
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
    return b"".join(kept)
