"""Command line of the simulator: `python -m app.provider.simulator --port 8900 ...`."""

from __future__ import annotations

import argparse

import uvicorn

from .app import Simulator
from .config import IMAGE_FORMATS, SimulatorConfig, SimulatorFaults

# (option, SimulatorFaults field, what it does): every fault the command line can switch on.
FAULT_OPTIONS = [
    ("--callback-drop-rate", "callback_drop_rate", "callbacks never sent at all"),
    ("--callback-duplicates", "callback_duplicates", "copies of each callback, sent concurrently"),
    (
        "--stale-after-final",
        "stale_after_final",
        "after the final callback, send a stale 'processing' one",
    ),
    ("--create-429-rate", "create_429_rate", "creates answered 429 rate_limit_exceeded"),
    ("--create-500-rate", "create_500_rate", "creates answered 500 internal_error, no task made"),
    ("--create-hang-rate", "create_hang_rate", "creates that make the task, then hold the answer"),
    ("--create-hang-seconds", "create_hang_seconds", "how long a hanging create holds its answer"),
    ("--query-500-rate", "query_500_rate", "task queries answered 500 internal_error"),
    ("--fail-rate", "fail_rate", "tasks that end failed with a provider error code"),
    (
        "--link-ttl",
        "link_ttl_seconds",
        "seconds a result link works after completion, 24 h by default",
    ),
    (
        "--file-bytes-per-second",
        "file_bytes_per_second",
        "result download speed limit in bytes/s, 0 for none",
    ),
    ("--down", "down", "answer every create and query 503, as during an outage"),
    ("--files-429-rate", "files_429_rate", "Files API uploads answered 429"),
    ("--files-error-rate", "files_error_rate", "Files API uploads answered 503"),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the server, behaviour and fault options to `parser`."""
    defaults = SimulatorConfig()
    faults = SimulatorFaults()
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (%(default)s)")
    parser.add_argument("--port", type=int, default=8900, help="port to listen on (%(default)s)")
    parser.add_argument("--root-path", default="", help="path prefix behind a proxy")
    parser.add_argument("--log-level", default="info", help="uvicorn's log level (%(default)s)")
    parser.add_argument(
        "--api-key",
        dest="api_keys",
        action="append",
        help=f"accepted Bearer key, repeatable (default {defaults.api_keys[0]})",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=defaults.duration_seconds,
        help="seconds a task takes from pending to its final state (%(default)s)",
    )
    parser.add_argument(
        "--allow-private-callbacks",
        action="store_true",
        help="accept http:// and loopback/private callback URLs (local runs; the provider "
        "refuses them)",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed of every random choice")
    parser.add_argument(
        "--image-format",
        choices=IMAGE_FORMATS,
        default=defaults.image_format,
        help="format of the result images (%(default)s)",
    )
    parser.add_argument(
        "--image-noise",
        type=float,
        nargs="?",
        const=1.0,
        default=0.0,
        metavar="FRACTION",
        help="fill this fraction of each image's rows with incompressible noise (alone: 1.0); "
        "1024x1024 PNGs are 3 MiB at 1.0 and 2 MiB at 0.667",
    )
    parser.add_argument(
        "--image-pixels",
        type=_pixels,
        default=None,
        metavar="WxH",
        help="render every result at this size instead of the task's (benchmarks of the "
        "gateway's own work: 64x64); default: the task's size",
    )
    parser.add_argument(
        "--no-fetch-references",
        dest="fetch_references",
        action="store_false",
        help="development shortcut: do not download a task's image_urls (the provider does, and "
        "fails the task when one is unusable)",
    )
    parser.add_argument(
        "--reference-timeout",
        type=float,
        default=defaults.reference_timeout_seconds,
        metavar="SECONDS",
        help="time allowed to download one reference image or a URL upload (%(default)s)",
    )
    parser.add_argument(
        "--max-image-bytes",
        type=int,
        default=defaults.max_image_bytes,
        metavar="BYTES",
        help="largest reference image and uploaded file (%(default)s)",
    )
    parser.add_argument(
        "--files-ttl",
        type=float,
        default=defaults.files_ttl_seconds,
        metavar="SECONDS",
        help="lifetime of a file uploaded to the Files API, 72 h by default",
    )
    parser.add_argument(
        "--files-quota",
        type=int,
        default=defaults.files_quota,
        metavar="N",
        help="files the Files API stores at once; uploads past it are answered 402 "
        "(default: no limit)",
    )
    parser.add_argument(
        "--credits",
        type=float,
        default=defaults.credits,
        metavar="CREDITS",
        help="the account's starting balance; a create it cannot cover is answered 402 "
        "insufficient_quota (%(default)s)",
    )
    parser.add_argument(
        "--unlimited-credits",
        action="store_true",
        help="the key has no credit limit: creates are never refused for credits",
    )
    group = parser.add_argument_group("faults (rates are fractions in [0, 1])")
    for flag, field, what in FAULT_OPTIONS:
        default = getattr(faults, field)
        if isinstance(default, bool):
            group.add_argument(flag, dest=field, action="store_true", help=what)
        else:
            group.add_argument(
                flag, dest=field, type=type(default), default=default, help=f"{what} (%(default)s)"
            )


def _pixels(text: str) -> tuple[int, int]:
    width, sep, height = text.lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit():
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 64x64, got {text!r}")
    return int(width), int(height)


def config_from_args(ns: argparse.Namespace) -> SimulatorConfig:
    """The configuration the parsed options describe; ValueError on an out-of-range value."""
    faults = SimulatorFaults(**{field: getattr(ns, field) for _, field, _ in FAULT_OPTIONS})
    return SimulatorConfig(
        api_keys=tuple(ns.api_keys) if ns.api_keys else SimulatorConfig.api_keys,
        duration_seconds=ns.duration,
        allow_private_callbacks=ns.allow_private_callbacks,
        image_format=ns.image_format,
        image_noise=ns.image_noise,
        image_pixels=ns.image_pixels,
        seed=ns.seed,
        fetch_references=ns.fetch_references,
        reference_timeout_seconds=ns.reference_timeout,
        max_image_bytes=ns.max_image_bytes,
        files_ttl_seconds=ns.files_ttl,
        files_quota=ns.files_quota,
        credits=ns.credits,
        unlimited_credits=ns.unlimited_credits,
        faults=faults,
    )


def run(ns: argparse.Namespace) -> None:
    """Serve a simulator built from `ns` until interrupted."""
    simulator = Simulator(config_from_args(ns))
    uvicorn.run(
        simulator.app,
        host=ns.host,
        port=ns.port,
        root_path=ns.root_path,
        log_level=ns.log_level,
    )


def main(argv: list[str] | None = None) -> None:
    """Entry point of `python -m app.provider.simulator`."""
    parser = argparse.ArgumentParser(description="Fake EvoLink gpt-image-1.5 upstream")
    add_arguments(parser)
    ns = parser.parse_args(argv)
    try:
        config_from_args(ns)
    except ValueError as exc:
        parser.error(str(exc))
    run(ns)
