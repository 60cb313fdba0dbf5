"""The simulator's state: tasks, fault dice, images and the completion scheduler."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import itertools
import logging
import random
import string
import time
from typing import TYPE_CHECKING, Any

from app.provider.types import (
    CALLER_ERROR_CODES,
    OTHER_ERROR_CODES,
    TASK_ID_PREFIX,
    TRANSIENT_ERROR_CODES,
)

from .billing import CreditAccount, task_credits
from .callbacks import CallbackSender
from .fetching import Fetcher, FetchLimits
from .files import FileStore
from .images import ImageCache, render_image
from .references import failure_message, fetch_references
from .stats import SimulatorStats
from .tasks import SimTask, final_body, stale_body

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from .config import SimulatorConfig, SimulatorFaults
    from .validation import CreateParams

logger = logging.getLogger(__name__)

TASK_ERROR_CODES = CALLER_ERROR_CODES + TRANSIENT_ERROR_CODES + OTHER_ERROR_CODES
_ID_ALPHABET = string.ascii_lowercase + string.digits


class Engine:
    """Holds every task and the uploaded files; checks each task's references when it starts
    and finalizes it at its due time (image, then callback)."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.stats = SimulatorStats()
        self.tasks: dict[str, SimTask] = {}
        self.images = ImageCache()
        self.callbacks = CallbackSender(self.stats, only_under=config.callback_base_url)
        self.fetcher = Fetcher()
        self.files = FileStore(config, self.stats, lambda: self.now())
        self.credits = CreditAccount(config.credits, unlimited=config.unlimited_credits)
        self._due: list[tuple[float, int, str]] = []
        self._order = itertools.count()
        self._wakeup: asyncio.Event | None = None
        self._stopping: asyncio.Event | None = None
        self._scheduler: asyncio.Task[None] | None = None
        self._jobs: set[asyncio.Task[None]] = set()

    @property
    def faults(self) -> SimulatorFaults:
        """The faults in force right now."""
        return self.config.faults

    @property
    def started(self) -> bool:
        """Whether the scheduler is running."""
        return self._scheduler is not None

    @staticmethod
    def now() -> float:
        """The monotonic clock that drives task progression."""
        return time.monotonic()

    def roll(self, rate: float) -> bool:
        """True with probability `rate`; draws nothing when the rate is 0."""
        return rate > 0.0 and self.rng.random() < rate

    @staticmethod
    def cost(params: CreateParams) -> float:
        """The credits a create of `params` reserves."""
        return task_credits(params.quality, params.size, len(params.image_urls))

    def create_task(self, request: dict[str, Any], params: CreateParams, base_url: str) -> SimTask:
        """Register an accepted create request, debit its credits and schedule its completion."""
        created = int(time.time())
        task_id = self._new_id(created)
        task = SimTask(
            id=task_id,
            created=created,
            created_at=self.now(),
            duration=self.config.duration_seconds,
            request=request,
            params=params,
            base_url=base_url,
            file_token="".join(self.rng.choices(_ID_ALPHABET, k=16)),
            image_format=self.config.image_format,
            image_noise=self.config.image_noise,
            credits=self.cost(params),
        )
        self.credits.debit(task.credits)
        if self.roll(self.faults.fail_rate):
            task.error_code = self.rng.choice(TASK_ERROR_CODES)
        self.tasks[task_id] = task
        self.stats.creates_accepted += 1
        if params.image_urls and self.config.fetch_references:
            task.fetching_references = True
            self._spawn(self._check_references(task))
        else:
            self._schedule(task)
        return task

    def _schedule(self, task: SimTask) -> None:
        """Queue a task (its due time now known) for finalization."""
        heapq.heappush(self._due, (task.due_at, next(self._order), task.id))
        if self._wakeup is not None:
            self._wakeup.set()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` in the background until it ends or the simulator stops."""
        job = asyncio.create_task(work)
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)

    async def _check_references(self, task: SimTask) -> None:
        """Download the task's references, as the provider does when it starts a task; an
        unusable one fails the task (image_processing_error) once all are done."""
        try:
            fetches = await fetch_references(
                self.fetcher, task.id, task.params.image_urls, self.fetch_limits()
            )
        except Exception:
            logger.exception("downloading the references of %s failed", task.id)
            fetches = []
            task.reference_error = "Reference images could not be downloaded (simulator fault)"
        for fetch in fetches:
            self.stats.reference_fetches.append(fetch)
            if fetch.ok:
                self.stats.references_fetched += 1
            else:
                self.stats.references_failed += 1
        task.references = fetches
        task.reference_error = task.reference_error or failure_message(fetches)
        task.references_settled_at = self.now()
        task.fetching_references = False
        self._schedule(task)

    def _new_id(self, created: int) -> str:
        while True:
            suffix = "".join(self.rng.choices(_ID_ALPHABET, k=8))
            task_id = f"{TASK_ID_PREFIX}{created}-{suffix}"
            if task_id not in self.tasks:
                return task_id

    def fetch_limits(self) -> FetchLimits:
        """Time and size limits of one download by the simulator (a reference, a URL upload)."""
        return FetchLimits(self.config.reference_timeout_seconds, self.config.max_image_bytes)

    def link_expired(self, task: SimTask) -> bool:
        """Whether the result link of a completed task has outlived its TTL."""
        return self.now() >= task.due_at + self.faults.link_ttl_seconds

    async def image(self, task: SimTask) -> bytes:
        """The encoded result image of a task, rendered on first use; records sha256 and size."""
        width, height = self.config.image_pixels or task.pixels
        data = await self.images.get(
            task.id,
            lambda: render_image(task.id, width, height, task.image_format, task.image_noise),
        )
        if task.image_sha256 is None:
            task.image_sha256 = hashlib.sha256(data).hexdigest()
            task.image_bytes = len(data)
        return data

    async def wait_stopping(self, seconds: float) -> None:
        """Sleep `seconds`, or less if the simulator stops meanwhile."""
        if self._stopping is None:
            await asyncio.sleep(seconds)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def start(self) -> None:
        """Open the HTTP clients and start the scheduler; a second call does nothing."""
        if self._scheduler is not None:
            return
        self._wakeup = asyncio.Event()
        self._stopping = asyncio.Event()
        await self.callbacks.start()
        await self.fetcher.start()
        self._scheduler = asyncio.create_task(self._run(), name="simulator-scheduler")

    async def stop(self) -> None:
        """Cancel the scheduler, every reference check and pending finalization, then close the
        clients and delete the uploaded files."""
        if self._scheduler is None:
            return
        assert self._stopping is not None
        self._stopping.set()
        pending = [self._scheduler, *self._jobs]
        self._scheduler = None
        for job in pending:
            job.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        self._jobs.clear()
        await self.callbacks.aclose()
        await self.fetcher.aclose()
        self.files.close()

    async def _run(self) -> None:
        """Finalize tasks as they fall due, sleeping until the next one or a new task."""
        assert self._wakeup is not None
        while True:
            self._wakeup.clear()
            now = self.now()
            while self._due and self._due[0][0] <= now:
                _, _, task_id = heapq.heappop(self._due)
                self._spawn(self._finalize(self.tasks[task_id]))
            timeout = self._due[0][0] - now if self._due else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout)

    async def _finalize(self, task: SimTask) -> None:
        """Render the image of a completed task, then deliver its callback (unless dropped)."""
        if task.finalized:
            return
        task.finalized = True
        if task.final_status == "failed":
            self.credits.refund(task.credits)
        try:
            if task.final_status == "completed":
                await self.image(task)
            if task.callback_url is None:
                return
            faults = self.faults
            if self.roll(faults.callback_drop_rate):
                task.callback_dropped = True
                self.stats.callbacks_dropped += 1
                return
            await self.callbacks.deliver(
                task.callback_url,
                final_body(task),
                task.callback_log,
                duplicates=faults.callback_duplicates,
                stale=stale_body(task) if faults.stale_after_final else None,
            )
        except Exception:
            logger.exception("finalizing %s failed", task.id)
