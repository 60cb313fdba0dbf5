"""Soak test: the whole system, in real processes, under a steady load with faults everywhere.

    .venv/bin/python -m bench.soak [--tasks 2000] [--rate 10] [--task-seconds 1] ...

Starts, all on 127.0.0.1: a fresh PostgreSQL database (on the server of
IMAGEGEN_TEST_DATABASE_URL, else postgresql://postgres@127.0.0.1:5432) migrated by
`imagegen-gateway migrate`; an S3 server (moto, its own process) behind a TCP proxy that can cut
it; the provider simulator (its own process) with faults on: 30% of callbacks dropped, every
callback delivered 3 times concurrently, a stale state after every final one, 5% of creates
answered 429 (each holding every replica's creates for 2 s, not the service's default minute:
the faults are random, not a rate limit), 5% of queries answered 500, 5% of tasks failed
upstream; two API processes
(`imagegen-gateway serve`, IMAGEGEN_RUN_WORKERS=false) and two worker processes
(`imagegen-gateway worker`), all on the one database and the one s3:// store; and, in this
process, a notification receiver that verifies every delivery's signature, records it by
webhook-id and answers 503 to a share of first deliveries.

Tasks are submitted at a steady rate, alternately to both API processes, each with its own
Idempotency-Key (a create that gets a connection error or a 5xx is repeated with the same key,
on the other API process). During the submissions: one worker is killed with SIGKILL and
restarted, every connection to the database is killed (pg_terminate_backend; the server is
shared, so it is not restarted), and the S3 server is cut off for 10 seconds.

Then it waits (bounded) until every task is terminal and every notification delivered, checks
that nothing was lost or duplicated (rows, upstream tasks, stored objects and their bytes,
notifications), prints the tables and exits 1 if any check failed."""

from .checks import percentile
from .cli import main
from .config import SoakConfig
from .evidence import (
    CUT_BEFORE_ACCEPTANCE,
    LOST_AFTER_ACCEPTANCE,
    Kill,
    kill_casualty,
    resent_after_kill,
)
from .load import Submission
from .receiver import Delivery
from .report import Check, Report
from .run import run_soak

__all__ = [
    "CUT_BEFORE_ACCEPTANCE",
    "LOST_AFTER_ACCEPTANCE",
    "Check",
    "Delivery",
    "Kill",
    "Report",
    "SoakConfig",
    "Submission",
    "kill_casualty",
    "main",
    "percentile",
    "resent_after_kill",
    "run_soak",
]
