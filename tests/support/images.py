"""Small real images, and a web server that hands them out (or fails to) for reference URLs."""

from __future__ import annotations

import asyncio
import hashlib
import io
import random
from collections import Counter
from collections.abc import AsyncIterator

from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP", "gif": "GIF"}


def image_bytes(image_format: str = "png", size: tuple[int, int] = (8, 6), seed: int = 0) -> bytes:
    """A valid `image_format` image of `size` whose random pixels depend only on `seed`."""
    width, height = size
    pixels = random.Random(seed).randbytes(width * height * 3)
    out = io.BytesIO()
    Image.frombytes("RGB", size, pixels).save(out, FORMATS[image_format])
    return out.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ImageHost:
    """An ASGI app: `/{name}` serves `files[name]` (bytes, declared type); `/status/{code}`
    answers that status; `/redirect/{name}` redirects to `/{name}`; `/hang` never answers;
    `/endless` streams zeros without end. `hits` counts requests by path; an event in
    `gates[name]` holds answers of `/{name}` back until it is set."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[bytes, str]] = {}
        self.gates: dict[str, asyncio.Event] = {}
        self.hits: Counter[str] = Counter()
        self.app = Starlette(
            routes=[
                Route("/status/{code:int}", self._status),
                Route("/redirect/{name}", self._redirect),
                Route("/hang", self._hang),
                Route("/endless", self._endless),
                Route("/{name}", self._file),
            ]
        )

    def add(self, name: str, data: bytes, content_type: str = "image/png") -> str:
        """Serve `data` at `/{name}`; returns the path."""
        self.files[name] = (data, content_type)
        return f"/{name}"

    async def _file(self, request: Request) -> Response:
        self.hits[request.url.path] += 1
        name = request.path_params["name"]
        gate = self.gates.get(name)
        if gate is not None:
            await gate.wait()
        found = self.files.get(name)
        if found is None:
            return Response(status_code=404)
        data, content_type = found
        return Response(data, media_type=content_type)

    async def _status(self, request: Request) -> Response:
        self.hits[request.url.path] += 1
        return Response(b"nope", status_code=request.path_params["code"])

    async def _redirect(self, request: Request) -> Response:
        self.hits[request.url.path] += 1
        return RedirectResponse(f"/{request.path_params['name']}", status_code=302)

    async def _hang(self, request: Request) -> Response:
        """Answer only once the client has gone."""
        self.hits[request.url.path] += 1
        while (await request.receive())["type"] != "http.disconnect":
            pass
        return Response(status_code=204)

    async def _endless(self, request: Request) -> Response:
        self.hits[request.url.path] += 1

        async def zeros() -> AsyncIterator[bytes]:
            chunk = b"\x89PNG\r\n\x1a\n" + bytes(64 * 1024 - 8)
            while True:
                yield chunk
                await asyncio.sleep(0)

        return StreamingResponse(zeros(), media_type="image/png")
