"""Command line of the soak: `python -m bench.soak [--tasks 2000] [--rate 10] ...`."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from bench import soak

from .config import SoakConfig
from .run import run_soak


def main(argv: list[str] | None = None) -> None:
    # prog: the name the usage line showed when the soak was one module, bench/soak.py.
    description = (soak.__doc__ or "").split("\n\n")[0]
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=description)
    defaults = SoakConfig()
    parser.add_argument("--tasks", type=int, default=defaults.tasks)
    parser.add_argument("--rate", type=float, default=defaults.rate, help="tasks per second")
    parser.add_argument("--task-seconds", type=float, default=defaults.task_seconds)
    parser.add_argument("--poll-after", type=float, default=defaults.poll_after_seconds)
    parser.add_argument("--s3-outage", type=float, default=defaults.s3_outage_seconds)
    parser.add_argument("--drain-timeout", type=float, default=defaults.drain_timeout)
    parser.add_argument("--uncertain-wait", type=float, default=defaults.uncertain_wait_seconds)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--workdir", type=Path, default=None, help="where the logs go")
    parser.add_argument("--keep-database", action="store_true")
    args = parser.parse_args(argv)
    if args.tasks < 1 or args.rate <= 0:
        parser.error("--tasks and --rate must be positive")
    config = SoakConfig(
        tasks=args.tasks,
        rate=args.rate,
        task_seconds=args.task_seconds,
        poll_after_seconds=args.poll_after,
        s3_outage_seconds=args.s3_outage,
        drain_timeout=args.drain_timeout,
        uncertain_wait_seconds=args.uncertain_wait,
        seed=args.seed,
        workdir=args.workdir,
        keep_database=args.keep_database,
    )
    report = asyncio.run(run_soak(config))
    print(report.render())
    raise SystemExit(0 if report.ok else 1)
