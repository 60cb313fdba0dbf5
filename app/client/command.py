"""`imagegen-gateway generate`: submit, follow with a progress bar, save the archived image."""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any, TextIO, get_args
from urllib.parse import urlsplit

import httpx

from app.client.api import Gateway, GatewayError, ImageView, TaskView
from app.client.download import ChecksumMismatch, save_image
from app.client.progress import Progress, format_bytes
from app.tasks.schemas import MAX_IDEMPOTENCY_KEY_CHARS, Quality, Size

ENV_URL = "IMAGEGEN_GATEWAY_URL"
ENV_API_KEY = "IMAGEGEN_GATEWAY_API_KEY"
ENV_TIMEOUT = "IMAGEGEN_GATEWAY_TIMEOUT"
DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT_SECONDS = 600.0

ATTEMPTS = 3  # of the submission and of the download, on transient errors
BACKOFF_SECONDS = 0.5  # doubled after each failed attempt
POLL_SECONDS = 0.5
SLOW_POLL_SECONDS = 2.0
SLOW_POLL_AFTER_SECONDS = 60.0
OUTAGE_SECONDS = 30.0  # how long following a task survives a service that does not answer
SAVING_STEP = 10  # without a terminal, print the download's progress every 10%

EXIT_CODES_HELP = """\
environment:
  IMAGEGEN_GATEWAY_URL      service origin (default http://127.0.0.1:8000)
  IMAGEGEN_GATEWAY_API_KEY  caller key from the service's IMAGEGEN_API_KEYS
  IMAGEGEN_GATEWAY_TIMEOUT  seconds to wait for the task (default 600)

exit codes:
  0    the image is saved
  1    the task failed or was cancelled
  2    usage or configuration error, or the service refused the key or the request (401, 422)
  3    the service could not be reached or answered with an unexpected error
  4    the task did not finish within --timeout (it goes on in the service)
  5    the downloaded image does not match the service's sha256 (nothing saved)
  130  interrupted (Ctrl-C)
"""


class ExitCode(IntEnum):
    """How `generate` ends."""

    OK = 0
    TASK_FAILED = 1
    USAGE = 2
    SERVICE = 3
    TIMEOUT = 4
    CHECKSUM = 5
    INTERRUPTED = 130


class Stop(Exception):
    """Ends the command with a message on stderr and an exit code."""

    def __init__(self, code: ExitCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Options:
    """The command's settings, from flags and then the environment."""

    prompt: str
    size: str | None
    quality: str | None
    image_urls: tuple[str, ...]
    out: Path
    url: str
    api_key: str
    timeout: float
    idempotency_key: str

    def body(self) -> dict[str, Any]:
        """The create request; fields not given are left to the service's defaults."""
        body: dict[str, Any] = {"prompt": self.prompt}
        if self.size is not None:
            body["size"] = self.size
        if self.quality is not None:
            body["quality"] = self.quality
        if self.image_urls:
            body["image_urls"] = list(self.image_urls)
        return body


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `generate`."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EXIT_CODES_HELP
    parser.add_argument("prompt", help="what to draw, or how to edit the reference images")
    parser.add_argument("--size", choices=get_args(Size), help="default: the service's (1024x1024)")
    parser.add_argument(
        "--quality", choices=get_args(Quality), help="default: the service's (high)"
    )
    parser.add_argument(
        "--image-url",
        dest="image_urls",
        action="append",
        default=[],
        metavar="URL",
        help="a reference image (repeat for several)",
    )
    parser.add_argument("--out", "-o", required=True, type=Path, metavar="FILE", help="save here")
    parser.add_argument("--url", help=f"service origin (${ENV_URL}, default {DEFAULT_URL})")
    parser.add_argument("--api-key", metavar="KEY", help=f"caller key (${ENV_API_KEY})")
    parser.add_argument(
        "--timeout",
        metavar="SECONDS",
        help=f"wait at most this long for the task (${ENV_TIMEOUT}, default "
        f"{DEFAULT_TIMEOUT_SECONDS:.0f})",
    )
    parser.add_argument(
        "--idempotency-key",
        metavar="KEY",
        help="repeat a request without making a second task (default: a new random key)",
    )


def resolve_options(args: argparse.Namespace, environ: Mapping[str, str]) -> Options:
    """Flags first, then the environment; Stop(USAGE) names what is wrong."""
    api_key = (args.api_key or environ.get(ENV_API_KEY, "")).strip()
    if not api_key:
        raise Stop(ExitCode.USAGE, f"no API key: pass --api-key or set {ENV_API_KEY}")
    url = (args.url or environ.get(ENV_URL, "") or DEFAULT_URL).strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Stop(ExitCode.USAGE, f"--url / {ENV_URL}: not an http(s) URL: {url!r}")
    raw_timeout = args.timeout or environ.get(ENV_TIMEOUT, "") or str(DEFAULT_TIMEOUT_SECONDS)
    try:
        timeout = float(raw_timeout)
    except ValueError:
        timeout = float("nan")
    if not timeout > 0 or timeout == float("inf"):
        raise Stop(ExitCode.USAGE, f"--timeout / {ENV_TIMEOUT}: not a positive number of seconds")
    key = args.idempotency_key if args.idempotency_key is not None else f"cli-{uuid.uuid4()}"
    if not 0 < len(key) <= MAX_IDEMPOTENCY_KEY_CHARS or not key.isprintable():
        raise Stop(
            ExitCode.USAGE,
            f"--idempotency-key: 1 to {MAX_IDEMPOTENCY_KEY_CHARS} printable characters",
        )
    out: Path = args.out
    if out.is_dir():
        raise Stop(ExitCode.USAGE, f"--out: {out} is a directory")
    if not out.absolute().parent.is_dir():
        raise Stop(ExitCode.USAGE, f"--out: the directory of {out} does not exist")
    if not args.prompt.strip():
        raise Stop(ExitCode.USAGE, "the prompt is empty")
    return Options(
        prompt=args.prompt,
        size=args.size,
        quality=args.quality,
        image_urls=tuple(args.image_urls),
        out=out,
        url=url,
        api_key=api_key,
        timeout=timeout,
        idempotency_key=key,
    )


class Generation:
    """One run of the command: submit, follow, save."""

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
        self.task_id: str | None = None

    def run(self) -> None:
        """Everything; raises Stop unless the image is saved."""
        task = self.follow(self.submit())
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

    def submit(self) -> TaskView:
        """POST the request, repeating it with the same Idempotency-Key after transient errors."""
        delay = BACKOFF_SECONDS
        for attempt in range(1, ATTEMPTS + 1):
            try:
                task, created = self.gateway.create(
                    self.options.body(), self.options.idempotency_key
                )
                break
            except GatewayError as exc:
                if exc.status in (401, 403):
                    raise Stop(ExitCode.USAGE, f"the service refused the API key ({exc})") from None
                if exc.status == 422:
                    raise Stop(ExitCode.USAGE, f"the service refused the request ({exc})") from None
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
                save_image(self.gateway, image, self.options.out, self._saving(image.bytes))
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

    def _saving(self, total: int) -> Callable[[int], None]:
        """Shows the download's progress, redrawing only when the percentage moves."""
        shown = -1

        def on_bytes(done: int) -> None:
            nonlocal shown
            percent = 100 if total <= 0 else min(100, done * 100 // total)
            if percent != shown:
                shown = percent
                detail = f"{format_bytes(done)} of {format_bytes(total)}"
                self.progress.update("saving", percent, detail)

        return on_bytes


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
    progress = Progress(stderr, tty=tty, steps={"saving": SAVING_STEP})
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
        if generation.task_id is None:
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
