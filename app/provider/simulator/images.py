"""Deterministic result images and a bounded cache of their encoded bytes."""

from __future__ import annotations

import asyncio
import io
import random
from collections import OrderedDict
from typing import TYPE_CHECKING

from PIL import Image

if TYPE_CHECKING:
    from collections.abc import Callable

CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
CACHE_BUDGET_BYTES = 256 * 1024 * 1024
_GRID = 16  # cells across the longer side of the simple pattern


def render_image(seed: str, width: int, height: int, image_format: str, noise: float) -> bytes:
    """Encode a `width`x`height` image whose content depends only on its arguments.

    `noise` is the fraction of rows (from the top) filled with random pixels, which no codec
    compresses: 1.0 makes the largest file for a size, 0.0 a simple pattern of cells."""
    rng = random.Random(seed)
    cols = _GRID
    rows = max(1, round(_GRID * height / width))
    cells = Image.frombytes("RGB", (cols, rows), rng.randbytes(cols * rows * 3))
    image = cells.resize((width, height), Image.Resampling.NEAREST)
    noise_rows = min(height, round(height * noise))
    if noise_rows:
        noisy = Image.frombytes("RGB", (width, noise_rows), rng.randbytes(width * noise_rows * 3))
        image.paste(noisy, (0, 0))
    out = io.BytesIO()
    if image_format == "png":
        # Noise does not compress: all noise is stored without the work; the pattern compresses
        # well (at level 1 beside noise, at level 6 alone).
        level = 0 if noise_rows == height else 1 if noise_rows else 6
        image.save(out, "PNG", compress_level=level)
    elif image_format == "jpeg":
        image.save(out, "JPEG", quality=90)
    else:
        image.save(out, "WEBP", quality=80, method=0)
    return out.getvalue()


class ImageCache:
    """Encoded images by key, rendered once in a thread, evicting least recently used."""

    def __init__(self, budget_bytes: int = CACHE_BUDGET_BYTES) -> None:
        self._budget = budget_bytes
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._size = 0
        self._locks: dict[str, asyncio.Lock] = {}

    async def get(self, key: str, render: Callable[[], bytes]) -> bytes:
        """The cached bytes for `key`, rendering them (deterministically again) when absent."""
        data = self._touch(key)
        if data is not None:
            return data
        lock = self._locks.setdefault(key, asyncio.Lock())
        try:
            async with lock:
                data = self._touch(key)
                if data is None:
                    data = await asyncio.to_thread(render)
                    self._put(key, data)
        finally:
            if not lock.locked():
                self._locks.pop(key, None)
        return data

    def discard(self, key: str) -> None:
        """Forget the bytes of `key` (e.g. when its link expired)."""
        data = self._items.pop(key, None)
        if data is not None:
            self._size -= len(data)

    def _touch(self, key: str) -> bytes | None:
        data = self._items.get(key)
        if data is not None:
            self._items.move_to_end(key)
        return data

    def _put(self, key: str, data: bytes) -> None:
        self._items[key] = data
        self._size += len(data)
        while self._size > self._budget and len(self._items) > 1:
            _, evicted = self._items.popitem(last=False)
            self._size -= len(evicted)
