"""`imagegen-gateway generate`: upload local reference images, submit, follow with a progress
bar, save the archived image."""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, TextIO

import httpx

from app.client.api import Gateway, GatewayError, ImageView, TaskView
from app.client.download import ChecksumMismatch, save_image
from app.client.options import ExitCode, Options, Stop, resolve_options
from app.client.progress import Progress, format_bytes
from app.client.references import LocalImage, TaskImage
from app.client.upload import FileChanged, UploadMismatch, upload_image

ATTEMPTS = 3  # of each upload, the submission and the download, on transient errors
BACKOFF_SECONDS = 0.5  # doubled after each failed attempt
POLL_SECONDS = 0.5
SLOW_POLL_SECONDS = 2.0
SLOW_POLL_AFTER_SECONDS = 60.0
REFUSED_INPUT = frozenset({413, 415, 422})  # the service's verdict on what was sent
UPLOAD_EXPIRED = "upload_expired"  # 409: the upload an Idempotency-Key made has expired
KEY_IN_USE = "conflict"  # 409: a request with this Idempotency-Key is in progress
OUTAGE_SECONDS = 30.0  # how long following a task survives a service that does not answer
SAVING_STEP = 10  # without a terminal, print the download's progress every 10%
UPLOADING_STEP = 10  # and an upload's
LARGE_UPLOAD_BYTES = 1024 * 1024  # smaller uploads get no progress bar, only their line


class Generation:
    """One run of the command: upload, submit, follow, save."""

    def __init__(
        self,
        options: Options,
        gateway: Gateway,
        progress: Progress,
        *,
        stdout: TextIO,
        sleep: Callable[[float], None],
        clock: Callable[[], float],
    ) -> None:
        self.options = options
        self.gateway = gateway
        self.progress = progress
        self.stdout = stdout
        self.sleep = sleep
        self.clock = clock
        self.started = clock()
        self.uploading: LocalImage | None = None
        self.task_id: str | None = None

    def run(self) -> None:
        """Everything; raises Stop unless the image is saved."""
        task = self.follow(self.submit(self.upload_references()))
        if task.status != "succeeded":
            reason = f": {task.error.code}: {task.error.message}" if task.error else ""
            verb = "was cancelled" if task.status == "cancelled" else task.status
            raise Stop(ExitCode.TASK_FAILED, f"task {task.id} {verb}{reason}\n{self.lookup()}")
        image = self.save(task)
        self.progress.close()
        print(
            f"saved {self.options.out}: {image.bytes} bytes ({image.content_type}), "
            f"sha256 {image.sha256}, task {task.id}",
            file=self.stdout,
        )

    def lookup(self) -> str:
        """How to find the task again."""
        return f"look it up: GET {self.options.url}/v1/tasks/{self.task_id}"

    def resume(self) -> str:
        """How to follow the same task again from this command."""
        return f"rerun with --idempotency-key {self.options.idempotency_key} to follow it again"

    def upload_references(self) -> list[dict[str, Any]]:
        """Upload the local files (each distinct file once), in order; the create's
        `reference_images`."""
        uploaded: dict[str, str] = {}  # sha256 -> upload id
        references: list[dict[str, Any]] = []
        for image in self.options.images:
            if isinstance(image, TaskImage):
                references.append(image.reference())
                continue
            if image.sha256 not in uploaded:
                uploaded[image.sha256] = self.upload(image)
            references.append({"upload_id": uploaded[image.sha256]})
        return references

    def upload(self, image: LocalImage) -> str:
        """POST one file, repeating it with its Idempotency-Key after transient errors; its id.

        When the upload that key made has expired (409 upload_expired, until the service's
        sweep forgets it), the file goes up once more under a key of its own."""
        self.uploading = image
        large = image.size >= LARGE_UPLOAD_BYTES
        on_bytes = self._transfer("uploading", image.size) if large else _ignore
        key = image.idempotency_key
        delay = BACKOFF_SECONDS
        attempt = 0
        while True:
            attempt += 1
            try:
                upload, created = upload_image(self.gateway, image, on_bytes, key)
                break
            except FileChanged as exc:
                raise Stop(ExitCode.USAGE, f"{exc}; nothing was submitted") from None
            except UploadMismatch as exc:
                raise Stop(
                    ExitCode.CHECKSUM,
                    f"uploading {image.path}: {exc}, but the file has {image.size} bytes with "
                    f"sha256 {image.sha256}; nothing was submitted",
                ) from None
            except GatewayError as exc:
                if exc.code == UPLOAD_EXPIRED and key == image.idempotency_key:
                    key = f"{image.idempotency_key}-{uuid.uuid4().hex}"
                    attempt -= 1
                    continue
                self._refused(exc, f"the service refused {image.path}")
                busy = exc.status == 409 and exc.code == KEY_IN_USE  # a concurrent run's upload
                if not (exc.transient or busy):
                    raise Stop(
                        ExitCode.SERVICE, f"uploading {image.path}: the service answered {exc}"
                    ) from None
                if attempt == ATTEMPTS:
                    raise Stop(
                        ExitCode.SERVICE, f"uploading {image.path}: {self._unavailable(exc)}"
                    ) from None
                self.sleep(delay)
                delay *= 2
        self.uploading = None
        what = "uploaded" if created else "already uploaded"
        self.progress.message(
            f"{what} {image.path} as {upload.id} ({format_bytes(upload.bytes)}, "
            f"{upload.content_type})"
        )
        return upload.id

    def submit(self, reference_images: list[dict[str, Any]]) -> TaskView:
        """POST the request, repeating it with the same Idempotency-Key after transient errors."""
        delay = BACKOFF_SECONDS
        for attempt in range(1, ATTEMPTS + 1):
            try:
                task, created = self.gateway.create(
                    self.options.body(reference_images), self.options.idempotency_key
                )
                break
            except GatewayError as exc:
                self._refused(exc, "the service refused the request")
                if not exc.transient:
                    raise Stop(ExitCode.SERVICE, f"the service answered {exc}") from None
                if attempt == ATTEMPTS:
                    raise Stop(ExitCode.SERVICE, self._unavailable(exc)) from None
                self.sleep(delay)
                delay *= 2
        self.task_id = task.id
        what = "submitted" if created else "already submitted with this Idempotency-Key"
        self.progress.message(f"task {task.id} {what}")
        self._show(task)
        return task

    @staticmethod
    def _refused(exc: GatewayError, what: str) -> None:
        """Stop(USAGE) with the service's message when it refused the key or the input."""
        if exc.status in (401, 403):
            raise Stop(ExitCode.USAGE, f"the service refused the API key ({exc})") from None
        if exc.status in REFUSED_INPUT:
            raise Stop(ExitCode.USAGE, f"{what} ({exc})") from None

    def _unavailable(self, exc: GatewayError) -> str:
        if exc.status is None:
            return f"cannot reach the service at {self.options.url} ({exc})"
        return f"the service at {self.options.url} is unavailable ({exc})"

    def follow(self, task: TaskView) -> TaskView:
        """Poll the task until it is terminal; Stop(TIMEOUT) at the deadline."""
        deadline = self.started + self.options.timeout
        failing_since: float | None = None
        while not task.terminal:
            now = self.clock()
            if now >= deadline:
                raise Stop(
                    ExitCode.TIMEOUT,
                    f"gave up after {self.options.timeout:g} s: task {task.id} is still "
                    f"{task.status} ({task.progress}%) and goes on in the service\n"
                    f"{self.resume()}, or {self.lookup()}",
                )
            slow = now - self.started >= SLOW_POLL_AFTER_SECONDS
            self.sleep(min(SLOW_POLL_SECONDS if slow else POLL_SECONDS, deadline - now))
            try:
                task = self.gateway.task(task.id)
            except GatewayError as exc:
                if not exc.transient:
                    raise Stop(
                        ExitCode.SERVICE, f"reading task {task.id}: {exc}\n{self.lookup()}"
                    ) from None
                failing_since = self.clock() if failing_since is None else failing_since
                if self.clock() - failing_since >= OUTAGE_SECONDS:
                    raise Stop(
                        ExitCode.SERVICE,
                        f"lost the service while following task {task.id}: "
                        f"{self._unavailable(exc)}\n{self.resume()}",
                    ) from None
                continue
            failing_since = None
            self._show(task)
        return task

    def _show(self, task: TaskView) -> None:
        if not task.terminal:
            self.progress.update(task.status, task.progress, f"{self.clock() - self.started:.0f} s")

    def save(self, task: TaskView) -> ImageView:
        """Download image 0 next to --out, check it, and rename it into place."""
        if not task.images:
            raise Stop(ExitCode.SERVICE, f"task {task.id} succeeded but lists no image")
        image = task.images[0]
        delay = BACKOFF_SECONDS
        for attempt in range(1, ATTEMPTS + 1):
            try:
                on_bytes = self._transfer("saving", image.bytes)
                save_image(self.gateway, image, self.options.out, on_bytes)
                return image
            except ChecksumMismatch as exc:
                raise Stop(
                    ExitCode.CHECKSUM,
                    f"the downloaded image of task {task.id} does not match: {exc}, the service "
                    f"reports {image.bytes} bytes with sha256 {image.sha256}; nothing was saved "
                    f"to {self.options.out}\n{self.lookup()}",
                ) from None
            except GatewayError as exc:
                if not exc.transient or attempt == ATTEMPTS:
                    raise Stop(
                        ExitCode.SERVICE,
                        f"could not download the image of task {task.id} ({exc})\n{self.lookup()}",
                    ) from None
                self.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    def _transfer(self, phase: str, total: int) -> Callable[[int], None]:
        """Shows a transfer's progress, redrawing only when the percentage moves."""
        shown = -1

        def on_bytes(done: int) -> None:
            nonlocal shown
            percent = 100 if total <= 0 else min(100, done * 100 // total)
            if percent != shown:
                shown = percent
                detail = f"{format_bytes(done)} of {format_bytes(total)}"
                self.progress.update(phase, percent, detail)

        return on_bytes


def _ignore(done: int) -> None:
    """A transfer too small to show."""


def run(
    args: argparse.Namespace,
    *,
    environ: Mapping[str, str] | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    transport: httpx.BaseTransport | None = None,
    tty: bool | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Run `generate`; the exit code."""
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    try:
        options = resolve_options(args, os.environ if environ is None else environ)
    except Stop as stop:
        print(f"imagegen-gateway generate: {stop.message}", file=stderr)
        return stop.code
    progress = Progress(stderr, tty=tty, steps={"saving": SAVING_STEP, "uploading": UPLOADING_STEP})
    gateway = Gateway(options.url, options.api_key, transport=transport)
    generation = Generation(options, gateway, progress, stdout=stdout, sleep=sleep, clock=clock)
    try:
        generation.run()
    except Stop as stop:
        progress.close()
        print(stop.message, file=stderr)
        return stop.code
    except KeyboardInterrupt:
        progress.close()
        if generation.uploading is not None:
            print(
                f"interrupted while uploading {generation.uploading.path}: nothing was submitted",
                file=stderr,
            )
        elif generation.task_id is None:
            print(
                "interrupted before the service answered; rerun with --idempotency-key "
                f"{options.idempotency_key} to pick up the task if one was made",
                file=stderr,
            )
        else:
            print(
                f"interrupted: task {generation.task_id} goes on in the service\n"
                f"{generation.resume()}, or {generation.lookup()}",
                file=stderr,
            )
        return ExitCode.INTERRUPTED
    finally:
        gateway.close()
    return ExitCode.OK
