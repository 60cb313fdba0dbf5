"""The reference images of a task (`image_urls`), downloaded and judged when it starts."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from .sniffing import REFERENCE_TYPES

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .fetching import Fetched, Fetcher, FetchLimits

SHOWN_URL_CHARS = 120


@dataclass(frozen=True, slots=True)
class ReferenceFetch:
    """One download of one reference: what came back and whether the task may use it."""

    task_id: str
    index: int
    url: str
    at: float  # wall-clock start, epoch seconds
    ok: bool
    error: str | None
    status: int | None
    bytes: int
    sha256: str | None  # of the exact bytes received, when the body was read to its end
    content_type: str | None  # sniffed
    declared_type: str | None
    elapsed: float


async def fetch_references(
    fetcher: Fetcher, task_id: str, urls: Sequence[str], limits: FetchLimits
) -> list[ReferenceFetch]:
    """Download every URL at once; one record each, in the order of `urls`."""
    at = time.time()
    fetched = await asyncio.gather(*(fetcher.fetch(url, limits) for url in urls))
    return [judge(task_id, index, at, one) for index, one in enumerate(fetched)]


def judge(task_id: str, index: int, at: float, fetched: Fetched) -> ReferenceFetch:
    """A usable reference is a whole 2xx body of at most the limit whose bytes are a JPEG,
    PNG or WebP image (whatever its Content-Type header or URL says)."""
    error = fetched.error
    if error is None and fetched.content_type not in REFERENCE_TYPES:
        found = f" ({fetched.content_type})" if fetched.content_type else ""
        error = f"not a JPEG, PNG or WebP image{found}"
    return ReferenceFetch(
        task_id=task_id,
        index=index,
        url=fetched.url,
        at=at,
        ok=error is None,
        error=error,
        status=fetched.status,
        bytes=fetched.size,
        sha256=fetched.sha256,
        content_type=fetched.content_type,
        declared_type=fetched.declared_type,
        elapsed=fetched.elapsed,
    )


def failure_message(fetches: Sequence[ReferenceFetch]) -> str | None:
    """The task's error message naming every unusable reference, or None when all are fine."""
    bad = [fetch for fetch in fetches if not fetch.ok]
    if not bad:
        return None
    reasons = "; ".join(f"image_urls[{f.index}] ({shown_url(f.url)}): {f.error}" for f in bad)
    return f"Reference image could not be processed: {reasons}"


def shown_url(url: str) -> str:
    """`url` without credentials, query and fragment (secrets stay out of messages), shortened."""
    try:
        parts = urlsplit(url)
        host = parts.netloc.rpartition("@")[2]
        bare = urlunsplit((parts.scheme, host, parts.path, "", ""))
    except ValueError:
        bare = url
    if len(bare) > SHOWN_URL_CHARS:
        return bare[: SHOWN_URL_CHARS - 3] + "..."
    return bare
