"""Child process of `bench.archive_copy`: the RSS of a worker copying one large image.

    .venv/bin/python -m bench.archive_worker_rss STORE_URL WARM_URL BIG_URL

Imports the archive code, creates the fetch client and the store as a worker does, copies the
small image at WARM_URL once (so that lazily created runtimes and buffers exist, as in a worker
that has archived before), then copies the image at BIG_URL with the production code path
(`open_image` -> `put_stream`; the archive makes no thumbnail since issue 17, the console does)
while recording the peak RSS. Prints one JSON object (KiB)."""

from __future__ import annotations

import asyncio
import gc
import json
import re
import sys
import threading
import time
from pathlib import Path

import httpx

from app.archive.fetch import ImageInfo, create_fetch_client, open_image
from app.core.safe_http import FetchPolicy
from app.storage.store import ObjectStore

POLICY = FetchPolicy(allow_private=True, max_bytes=60 * 1024 * 1024)
SAMPLE_SECONDS = 0.002
_STATUS = Path("/proc/self/status")


def status_kib(field: str) -> int:
    """A `kB` field of /proc/self/status (VmRSS, VmHWM)."""
    found = re.search(rf"^{field}:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    assert found is not None, field
    return int(found.group(1))


def settled_rss() -> int:
    """RSS after a collection and a moment for background threads to go quiet."""
    gc.collect()
    time.sleep(0.3)
    return status_kib("VmRSS")


def reset_peak() -> bool:
    """Make VmHWM start again from the current RSS (Linux >= 4.0); False when refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class Sampler(threading.Thread):
    """Reads VmRSS every few milliseconds and keeps the largest value."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = status_kib("VmRSS")
        self.samples = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(SAMPLE_SECONDS):
            self.peak = max(self.peak, status_kib("VmRSS"))
            self.samples += 1

    def stop(self) -> None:
        self._stop_event.set()
        self.join()
        self.peak = max(self.peak, status_kib("VmRSS"))


async def copy(fetcher: httpx.AsyncClient, store: ObjectStore, url: str, key: str) -> ImageInfo:
    """The production copy (`Archiver._copy`)."""
    async with open_image(fetcher, url, POLICY) as download:
        await store.put_stream(key, download.chunks(), content_type=download.content_type)
    return download.info


async def measured(
    fetcher: httpx.AsyncClient, store: ObjectStore, url: str, key: str
) -> dict[str, object]:
    """Copy one image while sampling the RSS; the figures (KiB)."""
    idle = settled_rss()
    exact = reset_peak()
    sampler = Sampler()
    sampler.start()
    started = time.perf_counter()
    try:
        info = await copy(fetcher, store, url, key)
    finally:
        seconds = time.perf_counter() - started
        sampler.stop()
    hwm = status_kib("VmHWM") if exact else 0
    return {
        "idle_kib": idle,
        "peak_kib": max(sampler.peak, hwm),
        "sampled_peak_kib": sampler.peak,
        "hwm_peak_kib": hwm,
        "after_kib": settled_rss(),
        "samples": sampler.samples,
        "seconds": seconds,
        "bytes": info.bytes,
        "sha256": info.sha256,
        "key": key,
    }


async def main(store_url: str, warm_url: str, big_url: str) -> dict[str, object]:
    fetcher = create_fetch_client(POLICY)
    store = ObjectStore.from_url(store_url)
    try:
        cold = settled_rss()
        await copy(fetcher, store, warm_url, "tasks/rss-warm/images/0")
        report = await measured(fetcher, store, big_url, "tasks/rss-big/images/0")
    finally:
        await fetcher.aclose()
    return report | {"cold_idle_kib": cold}


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    print(json.dumps(asyncio.run(main(*sys.argv[1:]))))
