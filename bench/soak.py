"""Soak test: the whole system, in real processes, under a steady load with faults everywhere.

    .venv/bin/python -m bench.soak [--tasks 2000] [--rate 10] [--task-seconds 1] ...

Starts, all on 127.0.0.1: a fresh PostgreSQL database (on the server of
IMAGEGEN_TEST_DATABASE_URL, else postgresql://postgres@127.0.0.1:5432) migrated by
`imagegen-gateway migrate`; an S3 server (moto, its own process) behind a TCP proxy that can cut
it; the provider simulator (its own process) with faults on: 30% of callbacks dropped, every
callback delivered 3 times concurrently, a stale state after every final one, 5% of creates
answered 429, 5% of queries answered 500, 5% of tasks failed upstream; two API processes
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

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import importlib.util
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from sqlalchemy.engine import make_url
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.support import databases
from tests.support.proxy import CuttableProxy
from tests.support.servers import free_port, serve_app

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SERVER = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
API_KEY = "soak-key-0123456789abcdef"
SIMULATOR_KEY = "sk-evo-simulator"
CALLBACK_SECRET = "soak-callback-secret-0123456789abcdefghij"
NOTIFY_SECRET = "whsec_c29hay10ZXN0LW5vdGlmeS1zZWNyZXQtMDEyMzQ1Njc4OQ=="
BUCKET = "imagegen-soak"
PREFIX = "soak"
AWS = {
    "AWS_ACCESS_KEY_ID": "soak-key-id",
    "AWS_SECRET_ACCESS_KEY": "soak-secret-key",
    "AWS_REGION": "us-east-1",
    "AWS_ALLOW_HTTP": "true",
}
TERMINAL = ("succeeded", "failed", "cancelled")
EVENT_TYPES = {status: f"task.{status}" for status in TERMINAL}
CALLBACK_TASK = re.compile(r"/callbacks/evolink/([0-9a-f-]{36})/")
OBJECT_KEY = re.compile(rf"^{PREFIX}/tasks/([0-9a-f-]{{36}})/images/(\d+)(\.thumb\.webp)?$")
NOTIFY_AVAILABLE = importlib.util.find_spec("app.notify.notifying") is not None


@dataclass
class SoakConfig:
    """What to run; the defaults are the full soak."""

    tasks: int = 2000
    rate: float = 10.0  # submissions per second
    server_url: str | None = None  # admin URL of the PostgreSQL server
    task_seconds: float = 1.0  # how long the simulator takes per task
    poll_after_seconds: float = 2.0
    lease_seconds: float = 5.0
    # A create whose answer was lost waits this long for a callback, then fails the task
    # (provider_timeout): short, so that such tasks end within the run and are counted.
    uncertain_wait_seconds: float = 60.0
    s3_outage_seconds: float = 10.0
    drain_timeout: float = 600.0  # bound on the wait for every task to be terminal
    callback_drop_rate: float = 0.3
    callback_duplicates: int = 3
    create_429_rate: float = 0.05
    query_500_rate: float = 0.05
    fail_rate: float = 0.05
    notify_fail_rate: float = 0.1  # share of first notification deliveries answered 503
    seed: int | None = None
    workdir: Path | None = None
    keep_database: bool = False
    progress: Callable[[str], None] | None = None


@dataclass
class Submission:
    """One create, as the load generator saw it."""

    index: int
    key: str
    task_id: str | None = None
    status_code: int | None = None
    attempts: int = 0
    error: str | None = None


@dataclass
class Delivery:
    """One notification POST the receiver got."""

    webhook_id: str
    type: str
    task_id: str
    task_status: str
    answered: int
    verified: bool
    after_success: bool
    at: float = 0.0  # wall clock of the answer


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Report:
    """Figures and checks of one run."""

    config: SoakConfig
    figures: list[tuple[str, str]] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    worker_killed_at: float | None = None  # wall clock of the SIGKILL
    worker_replaced_at: float | None = None  # the killed worker is dead; its replacement starts
    killed_worker_url: str | None = None  # its public base URL, which its callback URLs start with
    duplicates: int = 0
    losses: int = 0

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(check.ok for check in self.checks)

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append(Check(name, ok, detail))

    def render(self) -> str:
        width = max(len(name) for name, _ in self.figures) if self.figures else 10
        lines = ["", f"| {'measure':{width}} | value |", f"|{'-' * (width + 2)}|-------|"]
        lines += [f"| {name:{width}} | {value} |" for name, value in self.figures]
        lines += ["", "| check | result | detail |", "|---|---|---|"]
        lines += [f"| {c.name} | {'ok' if c.ok else 'FAILED'} | {c.detail} |" for c in self.checks]
        lines += ["", "disruptions: " + ("; ".join(self.events) or "none")]
        lines.append("result: " + ("every check passed" if self.ok else "FAILED"))
        return "\n".join(lines)


# --- processes -----------------------------------------------------------------------------


class Child:
    """A subprocess of the soak with its output in a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.args = args
        self.env = env
        self.log_path = log
        self._log = log.open("ab")
        self.popen = subprocess.Popen(
            args,
            cwd=ROOT,
            env=os.environ | env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C on the soak reaches only the soak
        )

    def tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def kill(self) -> None:
        """SIGKILL, no cleanup."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(timeout=10)
        self._log.close()

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, SIGKILL after `timeout`."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        self._log.close()


class Children:
    """Every child process started, stopped together at the end."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[Child] = []

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Child:
        log = self.directory / f"{name}-{len(self.started)}.log"
        child = Child(name, args, env or {}, log)
        self.started.append(child)
        return child

    def gateway(self, name: str, args: list[str], env: dict[str, str]) -> Child:
        return self.start(name, [sys.executable, "-m", "app.cli", *args], env)

    def stop_all(self) -> None:
        for child in reversed(self.started):
            child.stop()


async def wait_http(url: str, child: Child, limit: float = 60.0, ready: int = 200) -> None:
    """Poll `url` until it answers `ready`; fail early when the child exits."""
    deadline = time.monotonic() + limit
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            if child.popen.poll() is not None:
                raise RuntimeError(f"{child.name} exited early:\n{child.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url, timeout=2.0)).status_code == ready:
                    return
            await asyncio.sleep(0.2)
    raise TimeoutError(f"{url} ({child.name}) did not come up in {limit}s:\n{child.tail()}")


async def wait_exit(child: Child, limit: float) -> int:
    deadline = time.monotonic() + limit
    while (code := child.popen.poll()) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{child.name} did not finish in {limit}s:\n{child.tail()}")
        await asyncio.sleep(0.1)
    return code


def s3_client(endpoint: str) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import boto3  # type: ignore[import-untyped]

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=AWS["AWS_REGION"],
        aws_access_key_id=AWS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=AWS["AWS_SECRET_ACCESS_KEY"],
    )


def stored_objects(client: Any) -> dict[str, str]:
    """key -> sha256 of every object in the soak's bucket."""
    found: dict[str, str] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for item in page.get("Contents", []):
            body = client.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
            found[item["Key"]] = hashlib.sha256(body).hexdigest()
    return found


# --- notification receiver -----------------------------------------------------------------


class Receiver:
    """Records every notification by webhook-id; answers 503 to a share of first deliveries."""

    def __init__(self, fail_rate: float, seed: int | None) -> None:
        from standardwebhooks.webhooks import Webhook

        self.deliveries: list[Delivery] = []
        self.delivered: set[str] = set()  # webhook-ids answered 2xx
        self._seen: set[str] = set()
        self._fail_rate = fail_rate
        self._rng = random.Random(seed)
        self._webhook = Webhook(NOTIFY_SECRET)
        self.app = Starlette(routes=[Route("/hooks/{index:int}", self._hook, methods=["POST"])])

    async def _hook(self, request: Request) -> Response:
        body = await request.body()
        names = ("webhook-id", "webhook-timestamp", "webhook-signature")
        headers = {name: request.headers.get(name, "") for name in names}
        webhook_id = headers["webhook-id"]
        try:
            self._webhook.verify(body, headers)
            verified = True
        except Exception:  # any failure to verify is recorded as such
            verified = False
        try:
            message = json.loads(body)
            kind, data = str(message["type"]), message["data"]
            task_id, task_status = str(data["id"]), str(data["status"])
        except (ValueError, KeyError, TypeError):
            kind = task_id = task_status = "?"
        first = webhook_id not in self._seen
        self._seen.add(webhook_id)
        answer = 503 if first and self._rng.random() < self._fail_rate else 204
        self.deliveries.append(
            Delivery(
                webhook_id,
                kind,
                task_id,
                task_status,
                answer,
                verified,
                webhook_id in self.delivered,
                time.time(),
            )
        )
        if answer == 204:
            self.delivered.add(webhook_id)
        return Response(status_code=answer)


# --- load and disruptions --------------------------------------------------------------------


async def submit_all(
    config: SoakConfig,
    apis: list[str],
    receiver_url: str | None,
    run_id: str,
    say: Callable[[str], None],
) -> list[Submission]:
    """Submit `config.tasks` creates at `config.rate` per second, alternating API processes."""
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=32)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(timeout=30.0, limits=limits, headers=headers) as client:

        async def submit(submission: Submission) -> Submission:
            body: dict[str, Any] = {
                "prompt": f"soak {run_id} task {submission.index}",
                "size": "1:1",
                "quality": "low",
                "metadata": {"soak": run_id, "index": submission.index},
            }
            if receiver_url is not None:
                body["notify_url"] = f"{receiver_url}/hooks/{submission.index}"
            for attempt in range(12):  # bounded: 12 tries over about 30 s
                submission.attempts = attempt + 1
                api = apis[(submission.index + attempt) % len(apis)]
                try:
                    answer = await client.post(
                        f"{api}/v1/images/generations",
                        json=body,
                        headers={"Idempotency-Key": submission.key},
                    )
                except httpx.TransportError as exc:
                    submission.error = f"{type(exc).__name__}: {exc}"
                else:
                    submission.status_code = answer.status_code
                    if answer.status_code in (200, 202):
                        submission.task_id = answer.json()["id"]
                        submission.error = None
                        return submission
                    submission.error = f"HTTP {answer.status_code}: {answer.text[:200]}"
                    if answer.status_code < 500:
                        return submission
                await asyncio.sleep(min(0.25 * 2**attempt, 4.0))
            return submission

        started = time.monotonic()
        pending: list[asyncio.Task[Submission]] = []
        for index in range(config.tasks):
            await asyncio.sleep(max(0.0, started + index / config.rate - time.monotonic()))
            submission = Submission(index, f"soak-{run_id}-{index}")
            pending.append(asyncio.create_task(submit(submission)))
            if index and index % max(1, round(30 * config.rate)) == 0:  # about every 30 s
                say(f"submitted {index}/{config.tasks}")
        return list(await asyncio.gather(*pending))


async def disrupt(
    config: SoakConfig,
    restart_worker: Callable[[], Awaitable[int]],
    kill_connections: Callable[[], Awaitable[int]],
    proxy: CuttableProxy,
    events: list[str],
) -> None:
    """During the submissions: a worker SIGKILLed and restarted, every database connection
    killed, the S3 server cut off for `s3_outage_seconds`."""
    span = config.tasks / config.rate
    started = time.monotonic()

    async def at(fraction: float) -> float:
        await asyncio.sleep(max(0.0, started + fraction * span - time.monotonic()))
        return time.monotonic() - started

    when = await at(0.25)
    pid = await restart_worker()
    events.append(f"{when:.0f} s: worker pid {pid} killed (SIGKILL) and restarted")
    when = await at(0.45)
    killed = await kill_connections()
    events.append(f"{when:.0f} s: {killed} database connections killed (pg_terminate_backend)")
    when = await at(0.6)
    proxy.cut()
    try:
        await asyncio.sleep(config.s3_outage_seconds)
    finally:
        proxy.restore()
    events.append(f"{when:.0f} s: S3 server cut off for {config.s3_outage_seconds:.0f} s")


async def wait_for(
    what: str,
    read: Callable[[], Awaitable[tuple[bool, str]]],
    limit: float,
    progress: Callable[[str], None],
) -> bool:
    """Read until it says done or `limit` seconds pass; report progress every 5 s."""
    deadline = time.monotonic() + limit
    shown = 0.0
    while True:
        done, state = await read()
        if done:
            return True
        if time.monotonic() > deadline:
            progress(f"{what}: gave up after {limit:.0f} s ({state})")
            return False
        if time.monotonic() - shown > 5:
            progress(f"{what}: {state}")
            shown = time.monotonic()
        await asyncio.sleep(0.5)


# --- the run ---------------------------------------------------------------------------------


def asyncpg_args(url: str) -> dict[str, Any]:
    parsed = make_url(url)
    host = parsed.query.get("host") or parsed.host or "127.0.0.1"
    args: dict[str, Any] = {
        "user": parsed.username or "postgres",
        "database": parsed.database or "postgres",
        "host": host if isinstance(host, str) else host[0],
        "port": parsed.port or 5432,
    }
    if parsed.password:
        args["password"] = parsed.password
    return args


@contextlib.asynccontextmanager
async def fresh_database(server_url: str, keep: bool) -> AsyncIterator[str]:
    """A new empty database on the server; dropped afterwards unless `keep`."""
    name = f"imagegen_soak_{uuid.uuid4().hex[:10]}"
    await databases.admin_execute(server_url, f'CREATE DATABASE "{name}"')
    url = databases.with_database(server_url, name)
    try:
        yield url
    finally:
        if not keep:
            await databases.admin_execute(
                server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
            )


async def run_soak(config: SoakConfig) -> Report:
    """Run the whole soak; the report holds the figures and the checks."""
    say = config.progress or (lambda line: print(line, file=sys.stderr, flush=True))
    server_url = config.server_url or os.environ.get(databases.ENV_URL) or DEFAULT_SERVER
    work = config.workdir or Path(tempfile.mkdtemp(prefix="imagegen-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    report = Report(config)
    children = Children(work)
    say(f"soak: {config.tasks} tasks at {config.rate}/s; logs in {work}")
    try:
        async with fresh_database(server_url, config.keep_database) as database_url:
            await _run(config, report, children, server_url, database_url, say)
    finally:
        children.stop_all()
    return report


async def _run(
    config: SoakConfig,
    report: Report,
    children: Children,
    server_url: str,
    database_url: str,
    say: Callable[[str], None],
) -> None:
    s3_port, sim_port = free_port(), free_port()
    moto = children.start(
        "s3", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(s3_port)]
    )
    s3_direct = f"http://127.0.0.1:{s3_port}"
    sim_args = ["simulate-provider", "--port", str(sim_port), "--allow-private-callbacks"]
    sim_args += ["--duration", str(config.task_seconds), "--log-level", "warning"]
    sim_args += ["--callback-drop-rate", str(config.callback_drop_rate)]
    sim_args += ["--callback-duplicates", str(config.callback_duplicates), "--stale-after-final"]
    sim_args += ["--create-429-rate", str(config.create_429_rate)]
    sim_args += ["--query-500-rate", str(config.query_500_rate)]
    sim_args += ["--fail-rate", str(config.fail_rate)]
    if config.seed is not None:
        sim_args += ["--seed", str(config.seed)]
    simulator = children.gateway("simulator", sim_args, {})
    sim_url = f"http://127.0.0.1:{sim_port}"
    await wait_http(f"{s3_direct}/moto-api/", moto)
    s3 = s3_client(s3_direct)
    await asyncio.to_thread(s3.create_bucket, Bucket=BUCKET)
    await wait_http(f"{sim_url}/_sim/stats", simulator)

    receiver = Receiver(config.notify_fail_rate, config.seed) if NOTIFY_AVAILABLE else None
    if receiver is None:
        say("soak: app.notify is not there; notifications are not checked")
    proxy = CuttableProxy("127.0.0.1", s3_port)
    await proxy.start()
    try:
        async with contextlib.AsyncExitStack() as stack:
            receiver_url = None
            if receiver is not None:
                receiver_url = await stack.enter_async_context(serve_app(receiver.app))
            await _drive(
                config, report, children, server_url, database_url, sim_url, s3, proxy,
                receiver, receiver_url, say,
            )  # fmt: skip
    finally:
        await proxy.stop()
        await asyncio.to_thread(s3.close)


def gateway_env(config: SoakConfig, database_url: str, sim_url: str, s3_url: str) -> dict[str, str]:
    env = {
        "IMAGEGEN_DATABASE_URL": database_url,
        "IMAGEGEN_STORAGE_URL": f"s3://{BUCKET}/{PREFIX}",
        "IMAGEGEN_PROVIDER": "evolink",
        "IMAGEGEN_PROVIDER_BASE_URL": sim_url,
        "IMAGEGEN_PROVIDER_API_KEY": SIMULATOR_KEY,
        "IMAGEGEN_CALLBACK_SECRET": CALLBACK_SECRET,
        "IMAGEGEN_API_KEYS": f"soak:{API_KEY}",
        "IMAGEGEN_ALLOW_PRIVATE_NETWORKS": "true",
        "IMAGEGEN_POLL_AFTER_SECONDS": str(config.poll_after_seconds),
        "IMAGEGEN_JOB_LEASE_SECONDS": str(config.lease_seconds),
        "IMAGEGEN_SUBMIT_UNCERTAIN_WAIT_SECONDS": str(config.uncertain_wait_seconds),
        "IMAGEGEN_LOG_LEVEL": "INFO",
        **AWS,
        "AWS_ENDPOINT_URL": s3_url,
    }
    if NOTIFY_AVAILABLE:
        env["IMAGEGEN_NOTIFY_SECRET"] = NOTIFY_SECRET
        env["IMAGEGEN_NOTIFY_RETRY_SCHEDULE"] = "1,2,4,8,15,30,60"
    return env


async def _drive(
    config: SoakConfig,
    report: Report,
    children: Children,
    server_url: str,
    database_url: str,
    sim_url: str,
    s3: Any,
    proxy: CuttableProxy,
    receiver: Receiver | None,
    receiver_url: str | None,
    say: Callable[[str], None],
) -> None:
    env = gateway_env(config, database_url, sim_url, proxy.origin)
    api_ports = [free_port(), free_port()]
    apis = [f"http://127.0.0.1:{port}" for port in api_ports]
    env["IMAGEGEN_PUBLIC_BASE_URL"] = apis[0]
    migrate = children.gateway("migrate", ["migrate"], env)
    if await wait_exit(migrate, 120) != 0:
        raise RuntimeError(f"migrate failed:\n{migrate.tail()}")
    api_children = [
        children.gateway(
            f"api{i}",
            ["serve", "--port", str(port)],
            env | {"IMAGEGEN_RUN_WORKERS": "false", "IMAGEGEN_PUBLIC_BASE_URL": apis[i]},
        )
        for i, port in enumerate(api_ports)
    ]
    # Each worker builds callback URLs on its own API process: callbacks reach both.
    worker_env = [env | {"IMAGEGEN_PUBLIC_BASE_URL": api} for api in apis]
    workers = [children.gateway(f"worker{i}", ["worker"], worker_env[i]) for i in range(2)]
    for api, child in zip(apis, api_children, strict=True):
        await wait_http(f"{api}/readyz", child)
    await asyncio.sleep(1.0)
    for worker in workers:
        if worker.popen.poll() is not None:
            raise RuntimeError(f"{worker.name} exited early:\n{worker.tail()}")

    async def restart_worker() -> int:
        pid = workers[0].popen.pid
        report.worker_killed_at = time.time()
        report.killed_worker_url = worker_env[0]["IMAGEGEN_PUBLIC_BASE_URL"]
        await asyncio.to_thread(workers[0].kill)
        report.worker_replaced_at = time.time()
        workers[0] = children.gateway("worker0", ["worker"], worker_env[0])
        return pid

    async def kill_connections() -> int:
        name = make_url(database_url).database
        connection = await asyncpg.connect(**asyncpg_args(server_url))
        try:
            killed = await connection.fetchval(
                "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = $1 AND pid <> pg_backend_pid()) AS terminated",
                name,
            )
        finally:
            await connection.close()
        return int(killed)

    run_id = uuid.uuid4().hex[:8]
    say(f"soak: stack up (run {run_id}); submitting")
    started = time.time()
    chaos = asyncio.create_task(
        disrupt(config, restart_worker, kill_connections, proxy, report.events)
    )
    submissions = await submit_all(config, apis, receiver_url, run_id, say)
    submitted_at = time.time()
    await chaos
    say(f"soak: {len(submissions)} submitted in {submitted_at - started:.0f} s; draining")
    db = await asyncpg.connect(**asyncpg_args(database_url))  # after the connections were killed
    try:

        async def terminal() -> tuple[bool, str]:
            rows = await _fetch(db, "SELECT status, count(*) AS n FROM tasks GROUP BY status")
            counts = {row["status"]: row["n"] for row in rows}
            open_tasks = sum(n for status, n in counts.items() if status not in TERMINAL)
            return open_tasks == 0, ", ".join(f"{s} {n}" for s, n in sorted(counts.items()))

        drained = await wait_for("tasks", terminal, config.drain_timeout, say)
        drained_at = time.time()
        if receiver is not None:

            async def notified() -> tuple[bool, str]:
                rows = await _fetch(
                    db,
                    "SELECT id FROM tasks WHERE notify_url IS NOT NULL AND status = ANY($1)",
                    list(TERMINAL),
                )
                tasks_delivered = {d.task_id for d in receiver.deliveries if d.answered == 204}
                missing = sum(row["id"] not in tasks_delivered for row in rows)
                return missing == 0, f"{missing} terminal tasks not notified yet"

            await wait_for("notifications", notified, 120.0, say)
            await asyncio.sleep(3.0)  # anything sent again after a 2xx would show by now
        await _check(
            config, report, db, sim_url, s3, receiver, submissions,
            started, submitted_at, drained_at, drained,
        )  # fmt: skip
    finally:
        await db.close()


async def _fetch(db: asyncpg.Connection, query: str, *args: Any) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await db.fetch(query, *args)
    return rows


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


@dataclass(frozen=True)
class Kill:
    """A worker's SIGKILL (wall clock): sent `at`; the worker was dead and its replacement not
    yet started at `replaced_at`. `worker_url` is the worker's public base URL, on which it
    built the callback URLs of the creates it sent (and so will its replacement)."""

    at: float
    replaced_at: float
    worker_url: str


CUT_BEFORE_ACCEPTANCE = "cut before the provider accepted it"
LOST_AFTER_ACCEPTANCE = "accepted upstream, the answer died with the worker, no callback"


def kill_casualty(
    row: Mapping[str, Any], upstream: Sequence[Mapping[str, Any]], kill: Kill | None
) -> str | None:
    """Which of the two outcomes a worker's SIGKILL may leave `row` with, when the evidence
    proves one; None otherwise (and then a task that did not complete is a loss).

    Both: the task failed `provider_timeout` without ever learning an upstream id, and its
    create started before the kill. Either no upstream task carries its id (the kill cut the
    create before the provider took it), or exactly one does, and that one was sent by the
    killed worker (its callback URL is on that worker's base URL, and it was accepted before
    the replacement started: a create sent as the kill landed may be accepted just after it),
    and its callback was never sent (dropped by the simulator): the provider's answer
    was in the killed worker's memory, not yet committed, and no callback could tell the id.
    The provider has no idempotency key and no search, so nothing else can recover it."""
    if kill is None:
        return None
    if (row["status"], row["error_code"], row["provider_task_id"]) != (
        "failed",
        "provider_timeout",
        None,
    ):
        return None
    started = row["submit_started_at"]
    if started is None or started.timestamp() > kill.at:
        return None
    if not upstream:
        return CUT_BEFORE_ACCEPTANCE
    if len(upstream) > 1:
        return None
    [sim_task] = upstream
    if (
        sim_task["accepted_at"] <= kill.replaced_at
        and str(sim_task["callback_url"]).startswith(f"{kill.worker_url}/callbacks/")
        and sim_task["callback_dropped"]
        and not sim_task["callbacks"]
    ):
        return LOST_AFTER_ACCEPTANCE
    return None


def resent_after_kill(
    posts: Sequence[Delivery], recorded_attempts: int | None, kill: Kill | None
) -> bool:
    """Whether a notification sent again after a 2xx is the one a worker's SIGKILL explains:
    the attempt answered 2xx was never recorded (the receiver got one POST more than the
    database counts; the record rides out database errors, so only the death of its sender
    between the answer and the commit loses it), that answer came before the killed worker's
    replacement started, and every later POST came after the kill (the job taken over once
    its lease expired). A receiver sees the same webhook-id again (Standard Webhooks: it
    dedupes on it); no sender can avoid this window."""
    if kill is None or recorded_attempts is None or len(posts) != recorded_attempts + 1:
        return False
    ordered = sorted(posts, key=lambda post: post.at)
    first = next((i for i, post in enumerate(ordered) if 200 <= post.answered < 300), None)
    if first is None or ordered[first].at > kill.replaced_at:
        return False
    later = ordered[first + 1 :]
    return bool(later) and all(post.at >= kill.at for post in later)


async def _check(
    config: SoakConfig,
    report: Report,
    db: asyncpg.Connection,
    sim_url: str,
    s3: Any,
    receiver: Receiver | None,
    submissions: list[Submission],
    started: float,
    submitted_at: float,
    drained_at: float,
    drained: bool,
) -> None:
    rows = await _fetch(
        db,
        "SELECT id, idempotency_key, status, error_code, provider_task_id, notify_url,"
        " completed_at, submit_started_at, submitted_at FROM tasks",
    )
    images = await _fetch(db, "SELECT task_id, index, sha256 FROM task_images")
    async with httpx.AsyncClient(timeout=60.0) as client:
        upstream: list[dict[str, Any]] = (await client.get(f"{sim_url}/_sim/tasks")).json()
        sim_by_id: dict[str, dict[str, Any]] = {task["id"]: task for task in upstream}
        stats: dict[str, Any] = (await client.get(f"{sim_url}/_sim/stats")).json()
    objects = await asyncio.to_thread(stored_objects, s3)
    duplicates: Counter[str] = Counter()
    losses: Counter[str] = Counter()

    # Every create answered, one row per Idempotency-Key.
    unanswered = [s for s in submissions if s.task_id is None]
    losses["creates not accepted"] = len(unanswered)
    report.check(
        "every create accepted (retried with its key)",
        not unanswered,
        f"{len(submissions) - len(unanswered)}/{len(submissions)}"
        + (f"; first: {unanswered[0].error}" if unanswered else ""),
    )
    by_id = {row["id"]: row for row in rows}
    keys = Counter(row["idempotency_key"] for row in rows)
    submitted_ids = {s.task_id for s in submissions if s.task_id}
    duplicates["task rows"] = len(rows) - len(keys) + sum(n - 1 for n in keys.values())
    losses["task rows"] = len(submitted_ids - set(by_id))
    report.check(
        "one task per submission",
        len(rows) == len(submissions) == len(keys) and submitted_ids <= set(by_id),
        f"{len(rows)} rows, {len(keys)} keys, {len(submissions)} submissions",
    )
    open_rows = [row for row in rows if row["status"] not in TERMINAL]
    losses["tasks not terminal"] = len(open_rows)
    report.check(
        "every task terminal",
        drained and not open_rows,
        f"{len(rows) - len(open_rows)}/{len(rows)} terminal"
        + (f"; e.g. {open_rows[0]['id']} {open_rows[0]['status']}" if open_rows else ""),
    )

    # Upstream: exactly one provider task per gateway task (matched by the callback URL, which
    # carries the gateway's task id, and by the adopted provider_task_id).
    upstream_by_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for sim_task in upstream:
        match = CALLBACK_TASK.search(sim_task.get("callback_url") or "")
        upstream_by_task[match.group(1) if match else "?"].append(sim_task)
    extra_upstream = sum(len(found) - 1 for found in upstream_by_task.values() if len(found) > 1)
    extra_upstream += sum(len(found) for t, found in upstream_by_task.items() if t not in by_id)
    # A worker's SIGKILL in the middle of a create leaves an outcome the service cannot learn
    # (kill_casualty): the task is never resubmitted (at most one upstream task) and fails
    # `provider_timeout`. Such a task is counted apart, and only when the evidence proves it.
    kill = None
    if (
        report.worker_killed_at is not None
        and report.worker_replaced_at is not None
        and report.killed_worker_url is not None
    ):
        kill = Kill(report.worker_killed_at, report.worker_replaced_at, report.killed_worker_url)
    casualties = {
        row["id"]: kind
        for row in rows
        if (kind := kill_casualty(row, upstream_by_task.get(row["id"], []), kill)) is not None
    }
    cut_ids = {task_id for task_id, kind in casualties.items() if kind == CUT_BEFORE_ACCEPTANCE}
    lost_ids = {task_id for task_id, kind in casualties.items() if kind == LOST_AFTER_ACCEPTANCE}
    without_upstream = [
        row
        for row in rows
        if len(upstream_by_task.get(row["id"], [])) == 0 and row["id"] not in cut_ids
    ]
    mismatched = [
        row
        for row in rows
        if row["provider_task_id"] is not None
        and [t["id"] for t in upstream_by_task.get(row["id"], [])] != [row["provider_task_id"]]
    ]
    duplicates["upstream tasks"] = extra_upstream
    losses["tasks never sent upstream"] = len(without_upstream)
    report.check(
        "exactly one upstream task per task",
        len(upstream) == len(rows) - len(cut_ids) and not extra_upstream
        and not without_upstream and not mismatched,
        f"{len(upstream)} upstream for {len(rows)} tasks; {extra_upstream} extra, "
        f"{len(without_upstream)} missing, {len(mismatched)} with another provider id, "
        f"{len(cut_ids)} creates cut by the SIGKILL before the provider took them and "
        f"{len(lost_ids)} whose answer died with the killed worker, no callback (each failed "
        "provider_timeout, not resent)",
    )  # fmt: skip

    # Outcomes and bytes: failed exactly when failed upstream; the rest succeeded with the
    # simulator's bytes, recorded and stored.
    image_sha = {(r["task_id"], r["index"]): r["sha256"] for r in images}
    wrong_outcome: list[str] = []
    wrong_bytes: list[str] = []
    latencies: list[float] = []
    for row in rows:
        found = sim_by_id.get(row["provider_task_id"] or "")
        if found is None:
            # Sent upstream, but the id was never adopted (unless the answer died with the
            # SIGKILLed worker and no callback came).
            if upstream_by_task.get(row["id"]) and row["id"] not in lost_ids:
                wrong_outcome.append(f"{row['id']}: {row['status']} {row['error_code']}")
            continue
        sim_task = found
        if sim_task["final_status"] == "failed":
            if row["status"] != "failed" or row["error_code"] != sim_task["error_code"]:
                wrong_outcome.append(f"{row['id']}: {row['status']} {row['error_code']}")
            continue
        if row["status"] != "succeeded":
            wrong_outcome.append(f"{row['id']}: {row['status']} {row['error_code']}")
            continue
        key = f"{PREFIX}/tasks/{row['id']}/images/0"
        expected = sim_task["image_sha256"]
        if not expected or image_sha.get((row["id"], 0)) != expected:
            wrong_bytes.append(f"{row['id']}: recorded sha256 differs")
        elif objects.get(key) != expected:
            wrong_bytes.append(f"{row['id']}: stored object missing or differs")
        if row["completed_at"] is not None and sim_task.get("final_at") is not None:
            latencies.append(row["completed_at"].timestamp() - sim_task["final_at"])
    losses["wrong outcome"] = len(wrong_outcome)
    losses["bytes missing or wrong"] = len(wrong_bytes)
    succeeded = sum(row["status"] == "succeeded" for row in rows)
    failed = sum(row["status"] == "failed" for row in rows)
    failed_upstream = sum(t["final_status"] == "failed" for t in upstream)
    report.check(
        "failed exactly when failed upstream (same code)",
        not wrong_outcome,
        f"{failed} failed, {failed_upstream} failed upstream"
        + (f"; e.g. {wrong_outcome[0]}" if wrong_outcome else ""),
    )
    report.check(
        "every other task succeeded with the simulator's bytes (sha256, stored object)",
        not wrong_bytes and succeeded + failed == len(rows),
        f"{succeeded - len(wrong_bytes)}/{succeeded} match"
        + (f"; e.g. {wrong_bytes[0]}" if wrong_bytes else ""),
    )

    # One object per image (and at most one thumbnail beside it), nothing else in the bucket.
    per_image: Counter[tuple[str, int]] = Counter()
    thumbnails: set[tuple[str, int]] = set()
    stray = 0
    for key in objects:
        match = OBJECT_KEY.match(key)
        if match is None:
            stray += 1
        elif match.group(3):
            thumbnails.add((match.group(1), int(match.group(2))))
        else:
            per_image[(match.group(1), int(match.group(2)))] += 1
    succeeded_images = {(r["task_id"], r["index"]) for r in images}
    extra_objects = stray + len([k for k in per_image if k not in succeeded_images])
    extra_objects += len(thumbnails - succeeded_images)
    missing_objects = len(succeeded_images - set(per_image))
    duplicates["stored objects"] = extra_objects
    losses["images not stored"] = missing_objects
    report.check(
        "one object per image",
        sum(per_image.values()) == len(succeeded_images) == succeeded and not extra_objects
        and not missing_objects,
        f"{sum(per_image.values())} objects for {len(succeeded_images)} images "
        f"({len(thumbnails)} thumbnails beside them); {extra_objects} extra, "
        f"{missing_objects} missing",
    )  # fmt: skip

    # Notifications: one webhook-id per terminal task, delivered, never sent after a 2xx.
    notified_tasks = [r for r in rows if r["notify_url"] and r["status"] in TERMINAL]
    deliveries = receiver.deliveries if receiver is not None else []
    if receiver is not None:
        ids_by_task: dict[str, set[str]] = defaultdict(set)
        for delivery in deliveries:
            ids_by_task[delivery.task_id].add(delivery.webhook_id)
        not_notified = [r for r in notified_tasks if not ids_by_task.get(r["id"])]
        several = [t for t, found in ids_by_task.items() if len(found) > 1]
        undelivered = {d.webhook_id for d in deliveries} - receiver.delivered
        notes = await _fetch(db, "SELECT id, attempts FROM notifications")
        recorded = {str(note["id"]): int(note["attempts"]) for note in notes}
        posts_by_id: dict[str, list[Delivery]] = defaultdict(list)
        for delivery in deliveries:
            posts_by_id[delivery.webhook_id].append(delivery)
        resent_ids = {
            webhook_id
            for webhook_id, posts in posts_by_id.items()
            if any(post.after_success for post in posts)
            and resent_after_kill(posts, recorded.get(webhook_id), kill)
        }
        after_success = [
            d for d in deliveries if d.after_success and d.webhook_id not in resent_ids
        ]
        wrong_type = [
            d
            for d in deliveries
            if d.task_id not in by_id or d.type != EVENT_TYPES.get(by_id[d.task_id]["status"])
        ]
        unverified = [d for d in deliveries if not d.verified]
        duplicates["notifications (webhook-ids)"] = sum(len(ids_by_task[t]) - 1 for t in several)
        duplicates["notifications sent after a 2xx"] = len(after_success)
        losses["notifications"] = len(not_notified) + len(undelivered)
        report.check(
            "one notification per terminal task, none after a 2xx",
            not not_notified and not several and not undelivered and not after_success
            and not wrong_type and not unverified,
            f"{len(receiver.delivered)} delivered for {len(notified_tasks)} tasks in "
            f"{len(deliveries)} POSTs ({sum(d.answered != 204 for d in deliveries)} answered 503"
            f" and retried); {len(not_notified)} missing, {len(several)} with several ids, "
            f"{len(after_success)} after a 2xx ({len(resent_ids)} more sent again because the "
            f"SIGKILL cut the record of their 2xx), {len(wrong_type)} wrong type, "
            f"{len(unverified)} bad signatures",
        )  # fmt: skip
    else:
        resent_ids = set()
    report.duplicates = sum(duplicates.values())
    report.losses = sum(losses.values())
    report.check("duplicates", report.duplicates == 0, _counts(duplicates))
    report.check("losses", report.losses == 0, _counts(losses))

    finished = [r["completed_at"].timestamp() for r in rows if r["completed_at"] is not None]
    wall = (max(finished) if finished else drained_at) - started
    retried = [s for s in submissions if s.attempts > 1]
    service_failures = Counter(
        str(row["error_code"])
        for row in rows
        if row["status"] == "failed"
        and sim_by_id.get(row["provider_task_id"] or "", {}).get("final_status") != "failed"
    )
    answered_503 = sum(d.answered != 204 for d in deliveries)
    # The window in which a SIGKILL loses an accepted create's answer: from the provider's
    # acceptance to the start of the write of the id (that write's own commit comes on top).
    windows = [
        row["submitted_at"].timestamp() - sim_by_id[row["provider_task_id"]]["accepted_at"]
        for row in rows
        if row["submitted_at"] is not None and row["provider_task_id"] in sim_by_id
    ]
    notified = f"{len(deliveries)} / {answered_503}" if receiver else "not checked (no app.notify)"
    report.figures += [
        ("tasks", f"{len(submissions)}, {config.rate:g}/s over {submitted_at - started:.0f} s"),
        ("succeeded / failed", f"{succeeded} / {failed} ({failed_upstream} failed upstream)"),
        ("failed by the service", _counts(service_failures)),
        ("wall time, first submission to last terminal", f"{wall:.1f} s"),
        ("throughput", f"{len(rows) / wall:.1f} tasks/s" if wall > 0 else "-"),
        ("upstream completion -> succeeded, p50", _seconds(latencies, 0.50)),
        ("upstream completion -> succeeded, p99", _seconds(latencies, 0.99)),
        ("upstream completion -> succeeded, max", _seconds(latencies, 1.0)),
        ("creates retried by the client (same key)", str(len(retried))),
        ("creates cut by the worker's SIGKILL (not resent)", str(len(cut_ids))),
        ("answers lost with the SIGKILLed worker (accepted, no callback)", str(len(lost_ids))),
        ("notifications sent again: SIGKILL between the 2xx and its record", str(len(resent_ids))),
        (
            "provider acceptance -> id recorded, p50 / p99",
            f"{_ms(windows, 0.5)} / {_ms(windows, 0.99)}",
        ),
        ("callbacks dropped / sent", f"{stats['callbacks_dropped']} / {stats['callbacks_sent']}"),
        ("stale callbacks after final", str(stats["callbacks_stale"])),
        ("creates answered 429", str(stats["creates_rejected_429"])),
        ("queries answered 500", str(stats["queries_rejected_500"])),
        ("result downloads", str(sum(t["downloads"] for t in upstream))),
        ("notification POSTs / answered 503", notified),
        ("duplicates", str(report.duplicates)),
        ("losses", str(report.losses)),
    ]


def _seconds(values: list[float], fraction: float) -> str:
    return f"{percentile(values, fraction):.2f} s" if values else "-"


def _ms(values: list[float], fraction: float) -> str:
    return f"{percentile(values, fraction) * 1000:.1f} ms" if values else "-"


def _counts(counts: Counter[str]) -> str:
    return ", ".join(f"{name} {n}" for name, n in counts.items()) or "-"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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


if __name__ == "__main__":
    main()
