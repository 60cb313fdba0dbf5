"""Command line of the benchmark: `python -m bench.archive_copy [--images 60] ...`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
from pathlib import Path

from bench import archive_copy

from .memory import print_memory, worker_memory
from .servers import moto_s3, seaweedfs_s3, simulator, weed_binary
from .throughput import load, print_table, throughput


async def run_benchmark(
    images: int, concurrency: int, rounds: int, noise: float, weed: Path | None
) -> None:
    """The throughput rounds and their table, then the worker's RSS."""
    loads = load()
    with tempfile.TemporaryDirectory(prefix="bench-archive-") as name:
        tmp = Path(name)
        async with contextlib.AsyncExitStack() as servers:
            s3_server = await servers.enter_async_context(moto_s3(tmp / "moto.log"))
            s3_servers = [s3_server]
            if weed is not None:
                s3_servers.append(await servers.enter_async_context(seaweedfs_s3(weed, tmp)))
            async with simulator(tmp / "simulator.log", noise) as sim:
                paths = await throughput(sim, tmp, s3_servers, images, concurrency, rounds)
            print_table(paths, images, concurrency, rounds, (loads, load()))
            print_memory(await worker_memory(tmp, s3_server.url))


def main(argv: list[str] | None = None) -> None:
    # prog: the name the usage line showed when the benchmark was one module.
    parser = argparse.ArgumentParser(
        prog="python -m bench.archive_copy", description=archive_copy.__doc__
    )
    parser.add_argument("--images", type=int, default=60, help="copies per path and round")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--noise", type=float, default=0.667, help="noise fraction of each image (2 MiB: 0.667)"
    )
    parser.add_argument(
        "--no-seaweedfs", action="store_true", help="skip the SeaweedFS rows (and its install)"
    )
    parser.add_argument(
        "--weed", type=Path, help="a SeaweedFS `weed` binary to use instead of the bench's own"
    )
    options = parser.parse_args(argv)
    weed = None if options.no_seaweedfs else (options.weed or weed_binary())
    asyncio.run(
        run_benchmark(options.images, options.concurrency, options.rounds, options.noise, weed)
    )
