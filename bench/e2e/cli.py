"""Command line of the end-to-end benchmark."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from .run import E2EConfig, run_all


def _rates(text: str) -> tuple[float, ...]:
    return tuple(float(rate) for rate in text.split(","))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.e2e", description=__doc__)
    parser.add_argument(
        "--rates",
        type=_rates,
        default=(10, 25, 50, 100, 150),
        help="creates per second, one run each (10,25,50,100,150)",
    )
    parser.add_argument("--seconds", type=float, default=15.0, help="load per rate, s (15)")
    parser.add_argument(
        "--database",
        choices=("postgresql", "sqlite", "both"),
        default="postgresql",
        help="(postgresql)",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--split",
        action="store_true",
        help="the API without workers (IMAGEGEN_RUN_WORKERS=false) and one "
        "`worker` process, instead of one `serve` process",
    )
    mode.add_argument("--both-modes", action="store_true", help="one process, and split")
    parser.add_argument("--before-ref", help="also run the gateway of this commit (git worktree)")
    parser.add_argument(
        "--task-seconds", type=float, default=1.0, help="simulated generation time, s (1)"
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=120.0,
        help="longest wait for every task to end after the load, s (120)",
    )
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--no-bare", action="store_true", help="skip the bare pipeline")
    only.add_argument("--bare-only", action="store_true", help="only the bare pipeline")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="py-spy each service process during each rate: "
        "DIR/<run>-<process>.txt (raw; python -m bench.e2e.topframes FILE)",
    )
    parser.add_argument(
        "--profile-rate", type=int, default=100, help="py-spy samples per second (100)"
    )
    parser.add_argument("--workdir", type=Path, help="logs and checkouts (default: a temp dir)")
    args = parser.parse_args()
    modes = ("one", "split") if args.both_modes else ("split",) if args.split else ("one",)
    config = E2EConfig(
        rates=args.rates,
        seconds=args.seconds,
        databases=("postgresql", "sqlite") if args.database == "both" else (args.database,),
        modes=modes,
        before_ref=args.before_ref,
        task_seconds=args.task_seconds,
        drain_timeout=args.drain_timeout,
        bare=not args.no_bare,
        gateway=not args.bare_only,
        profile=args.profile,
        profile_rate=args.profile_rate,
        workdir=args.workdir,
    )
    print(asyncio.run(run_all(config)))
