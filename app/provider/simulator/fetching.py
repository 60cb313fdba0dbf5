"""The provider's own downloads (reference images, URL uploads): bounded, timed, hashed.

Like the real provider it fetches whatever it is given, loopback and private hosts included; it
ignores proxy variables and follows redirects."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx

from .callbacks import USER_AGENT
from .sniffing import Tally

if TYPE_CHECKING:
    from collections.abc import Callable

MAX_REDIRECTS = 5


@dataclass(frozen=True, slots=True)
class FetchLimits:
    """How long one download may take in all, and how many bytes its body may have."""

    seconds: float
    max_bytes: int


@dataclass(frozen=True, slots=True)
class Fetched:
    """What one download got: `error` says why it did not get a whole 2xx body."""

    url: str
    status: int | None
    error: str | None
    size: int
    sha256: str | None  # of the whole body; None when it was not read to its end
    content_type: str | None  # sniffed from the bytes
    declared_type: str | None  # the response's Content-Type header
    elapsed: float
    too_large: bool = False  # the body passed the byte limit (declared or received)


class Fetcher:
    """GETs URLs over one client, each within its own time and byte limits."""

    def __init__(self) -> None:
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        """Open the HTTP client."""
        if self._client is None:
            self._client = httpx.AsyncClient(
                limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
                follow_redirects=True,
                max_redirects=MAX_REDIRECTS,
                trust_env=False,
                headers={"User-Agent": USER_AGENT},
            )

    async def aclose(self) -> None:
        """Close the HTTP client."""
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def fetch(
        self, url: str, limits: FetchLimits, sink: Callable[[bytes], None] | None = None
    ) -> Fetched:
        """Download `url` within `limits`, passing each chunk of a 2xx body to `sink`; never
        raises for the network, the status or the size (the answer says)."""
        if self._client is None:
            raise RuntimeError("Fetcher.start() was not called")
        tally = Tally()
        status: int | None = None
        declared: str | None = None
        error: str | None = None
        too_large = False
        started = time.monotonic()
        try:
            async with (
                asyncio.timeout(limits.seconds),
                self._client.stream("GET", url, timeout=limits.seconds) as response,
            ):
                status = response.status_code
                declared = response.headers.get("content-type")
                if not 200 <= status < 300:
                    error = f"HTTP {status}"
                elif too_large := await _read(response, tally, limits.max_bytes, sink):
                    error = f"larger than {limits.max_bytes} bytes"
        except (TimeoutError, httpx.TimeoutException):
            error = f"timed out after {limits.seconds:g} s"
        except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:  # IDNAError among them
            error = f"{type(exc).__name__}: {exc}".rstrip(": ")
        return Fetched(
            url=url,
            status=status,
            error=error,
            size=tally.size,
            sha256=tally.sha256 if error is None else None,
            content_type=tally.content_type,
            declared_type=declared,
            elapsed=round(time.monotonic() - started, 4),
            too_large=too_large,
        )


async def _read(
    response: httpx.Response, tally: Tally, max_bytes: int, sink: Callable[[bytes], None] | None
) -> bool:
    """Read the body into `tally` (and `sink`); True when it passes `max_bytes` (declared or
    received), the rest then left unread."""
    length = response.headers.get("content-length", "")
    if length.isdigit() and int(length) > max_bytes:
        return True
    async for chunk in response.aiter_bytes():
        if tally.size + len(chunk) > max_bytes:
            return True
        tally.add(chunk)
        if sink is not None:
            sink(chunk)
    return False
