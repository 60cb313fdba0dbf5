"""Thumbnails of archived images: one small WebP per image, made at archive time, stored beside it.

Result bodies are hostile input. Only bodies the copy kept in memory anyway (those the store
takes in one put, at most 5 MiB) are decoded, never one read back, and only when the header's
pixel count fits the decode budget (app/archive/decoding.py). Decoding runs in a child process,
one at a time per service process, under a deadline: a decode that passes it (a hostile image,
a decoder bug) gets its process killed, which frees the slot and the CPU, and the next
thumbnail starts a fresh process. A thumbnail that cannot be made leaves the image archived
without one, with the reason."""

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
from app.storage.store import ObjectStore, StoreError

THUMBNAIL_CONTENT_TYPE: Final = "image/webp"
# The store buffers bodies up to one cloud part for a single put: keeping their chunks until the
# thumbnail is made costs no memory beyond the copy's own. Larger bodies get no thumbnail.
MAX_SOURCE_BYTES: Final = 5 * 1024 * 1024
THUMBNAILS_AT_ONCE: Final = 1  # decoder processes per service process: the budget holds per one
# The largest allowed image decodes in well under a second; ten leave room for a loaded host.
DECODE_DEADLINE: Final = timedelta(seconds=10)
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


class BodyKeeper:
    """Keeps the chunks of a stream passing through while it is at most `limit` bytes long."""

    def __init__(self, limit: int = MAX_SOURCE_BYTES) -> None:
        self._limit = limit
        self._chunks: list[bytes] = []
        self._size = 0

    async def tee(self, source: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """Yield `source` unchanged, keeping references to its chunks while within the limit."""
        try:
            async for chunk in source:
                self._size += len(chunk)
                if self._size <= self._limit:
                    self._chunks.append(chunk)
                elif self._chunks:
                    self._chunks = []  # past the limit: let go before the store does
                yield chunk
        finally:
            aclose = getattr(source, "aclose", None)
            if aclose is not None:
                await aclose()

    def take(self) -> bytes | None:
        """The whole body when it fitted the limit (once), else None."""
        if self._size > self._limit:
            return None
        body = b"".join(self._chunks)
        self._chunks = []
        return body


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
            raise ThumbnailRefused(f"cannot start the decoder process: {exc}") from None
        assert self._process.stdout is not None
        try:
            async with asyncio.timeout(START_DEADLINE.total_seconds()):
                ready = await self._process.stdout.readexactly(len(READY))
        except (TimeoutError, asyncio.IncompleteReadError):
            code = await self._stop()
            raise ThumbnailRefused(
                f"the decoder process did not start (exit status {code})"
            ) from None
        except BaseException:
            await self._stop()
            raise
        if ready != READY:
            await self._stop()
            raise ThumbnailRefused("the decoder process did not start (it said something else)")
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

    async def store_thumbnail(
        self,
        image_key: str,
        content_type: str,
        body: bytes | None,
        size: tuple[int | None, int | None],
    ) -> ThumbnailResult:
        """Make and store the thumbnail of the image stored at `image_key`; never raises for
        the image's sake (a failure is the result's `error`), so the image is archived anyway."""
        key = thumbnail_key(image_key)
        try:
            if body is None:
                raise ThumbnailRefused(f"the image is larger than {MAX_SOURCE_BYTES} bytes")
            width, height = size
            if width is not None and height is not None:  # the header, as the copy read it
                check_pixels(pillow_format(content_type), width, height)
            decoder = await self._idle.get()
            try:
                data = await decoder.thumbnail(body, content_type)
            finally:
                self._idle.put_nowait(decoder)
            del body
            await self._store.put_stream(key, _once(data), content_type=THUMBNAIL_CONTENT_TYPE)
        except (ThumbnailRefused, StoreError) as exc:
            return ThumbnailResult(key=None, error=str(exc)[:200])
        return ThumbnailResult(key=key, error=None)

    async def aclose(self) -> None:
        """End the decoder processes (a later thumbnail would start them again)."""
        for decoder in self._decoders:
            await decoder.aclose()


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data
