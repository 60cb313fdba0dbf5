"""The flags of `generate`, their environment variables, and how the command ends (exit codes)."""

from __future__ import annotations

import argparse
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any, get_args
from urllib.parse import urlsplit

from app.client.references import BadImage, Reference, resolve_images
from app.tasks.schemas import MAX_IDEMPOTENCY_KEY_CHARS, Quality, Size

ENV_URL = "IMAGEGEN_GATEWAY_URL"
ENV_API_KEY = "IMAGEGEN_GATEWAY_API_KEY"
ENV_TIMEOUT = "IMAGEGEN_GATEWAY_TIMEOUT"
DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT_SECONDS = 600.0

EXIT_CODES_HELP = """\
environment:
  IMAGEGEN_GATEWAY_URL      service origin (default http://127.0.0.1:8000)
  IMAGEGEN_GATEWAY_API_KEY  caller key from the service's IMAGEGEN_API_KEYS
  IMAGEGEN_GATEWAY_TIMEOUT  seconds to wait for the task (default 600)

exit codes:
  0    the image is saved
  1    the task failed or was cancelled
  2    usage or configuration error (a bad --image included), or the service refused the
       key, the request or a reference image (401, 413, 415, 422)
  3    the service could not be reached or answered with an unexpected error
  4    the task did not finish within --timeout (it goes on in the service)
  5    the downloaded image does not match the service's sha256 (nothing saved), or the
       service recorded other bytes than an uploaded file's
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
    images: tuple[Reference, ...]
    out: Path
    url: str
    api_key: str
    timeout: float
    idempotency_key: str

    def body(self, reference_images: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """The create request; fields not given are left to the service's defaults."""
        body: dict[str, Any] = {"prompt": self.prompt}
        if self.size is not None:
            body["size"] = self.size
        if self.quality is not None:
            body["quality"] = self.quality
        if self.image_urls:
            body["image_urls"] = list(self.image_urls)
        if reference_images:
            body["reference_images"] = reference_images
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
        help="a reference image the provider downloads from this URL (repeat for several)",
    )
    parser.add_argument(
        "--image",
        dest="images",
        action="append",
        default=[],
        metavar="FILE|task:ID[:N]",
        help="a reference image: a local file (uploaded first) or image N (default 0) of an "
        "earlier task of yours; repeat for several, kept in order after the --image-url ones",
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
    try:
        images = resolve_images(args.images, len(args.image_urls))
    except BadImage as exc:
        raise Stop(ExitCode.USAGE, str(exc)) from None
    return Options(
        prompt=args.prompt,
        size=args.size,
        quality=args.quality,
        image_urls=tuple(args.image_urls),
        images=images,
        out=out,
        url=url,
        api_key=api_key,
        timeout=timeout,
        idempotency_key=key,
    )
