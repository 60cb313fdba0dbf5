"""Command line of the simulator: `python -m app.provider.simulator --port 8900 ...`."""

from __future__ import annotations

import argparse

import uvicorn

from .app import Simulator
from .config import IMAGE_FORMATS, SimulatorConfig, SimulatorFaults


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
    faults_group = parser.add_argument_group("faults (rates are fractions in [0, 1])")
    add = faults_group.add_argument
    add(
        "--callback-drop-rate",
        type=float,
        default=faults.callback_drop_rate,
        help="callbacks never sent at all (%(default)s)",
    )
    add(
        "--callback-duplicates",
        type=int,
        default=faults.callback_duplicates,
        help="copies of each callback, sent concurrently (%(default)s)",
    )
    add(
        "--stale-after-final",
        action="store_true",
        help="after the final callback, send a stale 'processing' one",
    )
    add(
        "--create-429-rate",
        type=float,
        default=faults.create_429_rate,
        help="creates answered 429 rate_limit_exceeded (%(default)s)",
    )
    add(
        "--create-500-rate",
        type=float,
        default=faults.create_500_rate,
        help="creates answered 500 internal_error, no task made (%(default)s)",
    )
    add(
        "--create-hang-rate",
        type=float,
        default=faults.create_hang_rate,
        help="creates that make the task, then hold the answer (%(default)s)",
    )
    add(
        "--create-hang-seconds",
        type=float,
        default=faults.create_hang_seconds,
        help="how long a hanging create holds its answer (%(default)s)",
    )
    add(
        "--query-500-rate",
        type=float,
        default=faults.query_500_rate,
        help="task queries answered 500 internal_error (%(default)s)",
    )
    add(
        "--fail-rate",
        type=float,
        default=faults.fail_rate,
        help="tasks that end failed with a provider error code (%(default)s)",
    )
    add(
        "--link-ttl",
        type=float,
        default=faults.link_ttl_seconds,
        help="seconds a result link works after completion (%(default)s: 24 h)",
    )
    add(
        "--file-bytes-per-second",
        type=float,
        default=faults.file_bytes_per_second,
        help="throttle result downloads (0: unthrottled)",
    )
    add(
        "--down", action="store_true", help="answer every create and query 503, as during an outage"
    )


def config_from_args(ns: argparse.Namespace) -> SimulatorConfig:
    """The configuration the parsed options describe; ValueError on an out-of-range value."""
    faults = SimulatorFaults(
        callback_drop_rate=ns.callback_drop_rate,
        callback_duplicates=ns.callback_duplicates,
        stale_after_final=ns.stale_after_final,
        create_429_rate=ns.create_429_rate,
        create_500_rate=ns.create_500_rate,
        create_hang_rate=ns.create_hang_rate,
        create_hang_seconds=ns.create_hang_seconds,
        query_500_rate=ns.query_500_rate,
        fail_rate=ns.fail_rate,
        link_ttl_seconds=ns.link_ttl,
        file_bytes_per_second=ns.file_bytes_per_second,
        down=ns.down,
    )
    return SimulatorConfig(
        api_keys=tuple(ns.api_keys) if ns.api_keys else SimulatorConfig.api_keys,
        duration_seconds=ns.duration,
        allow_private_callbacks=ns.allow_private_callbacks,
        image_format=ns.image_format,
        image_noise=ns.image_noise,
        seed=ns.seed,
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
