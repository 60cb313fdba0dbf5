"""Command line of the fairness benchmark."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from .run import BenchConfig, run_all


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fairness", description=__doc__)
    parser.add_argument("--a-tasks", type=int, default=1000, help="caller A's backlog (1000)")
    parser.add_argument("--b-tasks", type=int, default=20, help="caller B's tasks (20)")
    parser.add_argument(
        "--notify-timeout", type=float, default=10.0, help="gateway notify timeout, s (10)"
    )
    parser.add_argument("--concurrency", type=int, default=8, help="worker slots (8)")
    parser.add_argument("--task-seconds", type=float, default=1.0, help="simulated task time")
    parser.add_argument(
        "--before-ref", default="1a26dc8", help="git commit of the BEFORE code (main, 1a26dc8)"
    )
    parser.add_argument(
        "--b-when-notifying",
        action="store_true",
        help="B submits once A's notifications hang (default: right after A's creates)",
    )
    parser.add_argument("--only", choices=("before", "after"), help="run one side only")
    parser.add_argument("--workdir", type=Path, help="logs and checkouts (default: a temp dir)")
    args = parser.parse_args()
    config = BenchConfig(
        a_tasks=args.a_tasks,
        b_tasks=args.b_tasks,
        notify_timeout=args.notify_timeout,
        concurrency=args.concurrency,
        task_seconds=args.task_seconds,
        before_ref=args.before_ref,
        sides=("before", "after") if args.only is None else (args.only,),
        workdir=args.workdir,
        b_when_notifying=args.b_when_notifying,
    )
    print(asyncio.run(run_all(config)))
