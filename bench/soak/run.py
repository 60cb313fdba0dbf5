"""The run: a fresh database, the stack started, the load and the disruptions, the drain."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from tests.support import databases
from tests.support.proxy import CuttableProxy
from tests.support.servers import free_port, serve_app

from .checks import check_run, fetch
from .config import (
    API_KEY,
    AWS,
    BUCKET,
    CALLBACK_SECRET,
    DEFAULT_SERVER,
    NOTIFY_AVAILABLE,
    NOTIFY_SECRET,
    PREFIX,
    SIMULATOR_KEY,
    TERMINAL,
    SoakConfig,
)
from .load import disrupt, submit_all, wait_for
from .processes import Children, s3_client, wait_exit, wait_http
from .receiver import Receiver
from .report import Report


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
        "IMAGEGEN_PROVIDER_RATE_LIMIT_WAIT_SECONDS": str(config.rate_limit_wait_seconds),
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
            rows = await fetch(db, "SELECT status, count(*) AS n FROM tasks GROUP BY status")
            counts = {row["status"]: row["n"] for row in rows}
            open_tasks = sum(n for status, n in counts.items() if status not in TERMINAL)
            return open_tasks == 0, ", ".join(f"{s} {n}" for s, n in sorted(counts.items()))

        drained = await wait_for("tasks", terminal, config.drain_timeout, say)
        drained_at = time.time()
        if receiver is not None:

            async def notified() -> tuple[bool, str]:
                rows = await fetch(
                    db,
                    "SELECT id FROM tasks WHERE notify_url IS NOT NULL AND status = ANY($1)",
                    list(TERMINAL),
                )
                tasks_delivered = {d.task_id for d in receiver.deliveries if d.answered == 204}
                missing = sum(row["id"] not in tasks_delivered for row in rows)
                return missing == 0, f"{missing} terminal tasks not notified yet"

            await wait_for("notifications", notified, 120.0, say)
            await asyncio.sleep(3.0)  # anything sent again after a 2xx would show by now
        await check_run(
            config, report, db, sim_url, s3, receiver, submissions,
            started, submitted_at, drained_at, drained,
        )  # fmt: skip
    finally:
        await db.close()
