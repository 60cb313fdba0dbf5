"""The runs: for each side (BEFORE, AFTER), an idle run and a loaded run, each on a fresh
PostgreSQL database with its own simulator and gateway processes; then the table."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from bench.soak.run import asyncpg_args, fresh_database
from tests.support import databases
from tests.support.servers import free_port, serve_app

from .receiver import SlowReceiver

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SERVER = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
KEY_A = "fairness-caller-a-0123456789"
KEY_B = "fairness-caller-b-0123456789"
NOTIFY_SECRET = "whsec_c29hay10ZXN0LW5vdGlmeS1zZWNyZXQtMDEyMzQ1Njc4OQ=="
TERMINAL = ("succeeded", "failed", "cancelled")


@dataclass
class BenchConfig:
    a_tasks: int = 1000
    b_tasks: int = 20
    notify_timeout: float = 10.0
    concurrency: int = 8
    task_seconds: float = 1.0
    before_ref: str = "1a26dc8"
    sides: tuple[str, ...] = ("before", "after")
    workdir: Path | None = None
    drain_timeout: float = 1800.0
    # B submits once A's notifications are hanging (A's tasks finished upstream), rather than
    # right after A's creates were accepted.
    b_when_notifying: bool = False


@dataclass
class Outcome:
    """One run."""

    side: str
    scenario: str
    b_latencies: list[float] = field(default_factory=list)
    # B's latency in two parts: provider completion -> the gateway knows (callback or poll
    # applied: `archiving`), then the archive copy (`archiving` -> `succeeded`).
    b_to_archiving: list[float] = field(default_factory=list)
    b_archiving: list[float] = field(default_factory=list)
    b_missing: int = 0
    a_terminal: int = 0
    a_delivered: int = 0
    a_given_up: int = 0
    a_pending: int = 0
    a_held_requests: int = 0
    seconds: float = 0.0
    code: str = ""

    def p(self, fraction: float, values: list[float] | None = None) -> float:
        values = self.b_latencies if values is None else values
        if not values:
            return float("nan")
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class Children:
    """Child processes of one run, in one code tree, logs in the work directory."""

    def __init__(self, code: Path, logs: Path) -> None:
        self.code, self.logs = code, logs
        self.started: list[subprocess.Popen[bytes]] = []

    def start(
        self, name: str, args: list[str], env: dict[str, str], module: str = "app.cli"
    ) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("ab")
        child = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=self.code,  # `-m` puts the code tree first on sys.path: its `app` is the one run
            env=os.environ | env | {"PYTHONPATH": str(self.code)},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.started.append(child)
        return child

    def stop_all(self) -> None:
        for child in reversed(self.started):
            if child.poll() is None:
                child.terminate()
                try:
                    child.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()


def code_of(code: Path) -> str:
    """Which `app` a child started in `code` imports, and its commit: said in the table."""
    where = subprocess.run(
        [sys.executable, "-c", "import app; print(app.__file__)"],
        cwd=code,
        env=os.environ | {"PYTHONPATH": str(code)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not where.startswith(str(code)):
        raise RuntimeError(f"a child in {code} would import {where}")
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=code, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "app"], cwd=code, capture_output=True, text=True
    ).stdout.strip()
    return commit + (" (+ uncommitted changes)" if dirty else "")


@contextlib.contextmanager
def before_checkout(ref: str, work: Path) -> Any:
    """A detached `git worktree` of the BEFORE commit, removed afterwards."""
    path = work / f"before-{ref}"
    subprocess.run(
        ["git", "worktree", "add", "--detach", str(path), ref],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    try:
        yield path
    finally:
        subprocess.run(
            ["git", "worktree", "remove", "--force", str(path)], cwd=ROOT, capture_output=True
        )


async def wait_http(url: str, child: subprocess.Popen[bytes], limit: float = 90.0) -> None:
    deadline = time.monotonic() + limit
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            if child.poll() is not None:
                raise RuntimeError(f"{child.args!r} exited early")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url, timeout=2.0)).status_code == 200:
                    return
            await asyncio.sleep(0.2)
    raise TimeoutError(f"{url} did not come up in {limit}s")


@contextlib.asynccontextmanager
async def stack(
    config: BenchConfig, side: str, code: Path, logs: Path, database_url: str
) -> AsyncIterator[tuple[str, str]]:
    """Simulator and one gateway process (API and workers); yields their URLs."""
    children = Children(code, logs)
    sim_port, api_port = free_port(), free_port()
    sim_url, api_url = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{api_port}"
    try:
        sim_args = ["simulate-provider", "--port", str(sim_port), "--allow-private-callbacks"]
        sim_args += ["--duration", str(config.task_seconds), "--log-level", "warning"]
        simulator = children.start("simulator", sim_args, {})
        env = {
            "IMAGEGEN_DATABASE_URL": database_url,
            "IMAGEGEN_STORAGE_URL": f"file://{logs / 'store'}",
            "IMAGEGEN_PROVIDER": "evolink",
            "IMAGEGEN_PROVIDER_BASE_URL": sim_url,
            "IMAGEGEN_PROVIDER_API_KEY": "sk-evo-simulator",
            "IMAGEGEN_CALLBACK_SECRET": "fairness-callback-secret-0123456789abcdef",
            "IMAGEGEN_API_KEYS": f"a:{KEY_A},b:{KEY_B}",
            "IMAGEGEN_ALLOW_PRIVATE_NETWORKS": "true",
            "IMAGEGEN_PUBLIC_BASE_URL": api_url,
            "IMAGEGEN_NOTIFY_SECRET": NOTIFY_SECRET,
            "IMAGEGEN_NOTIFY_TIMEOUT_SECONDS": str(config.notify_timeout),
            # Short, so that A's notifications end (delivered or given up) within the run.
            "IMAGEGEN_NOTIFY_RETRY_SCHEDULE": "1,2,4",
            "IMAGEGEN_WORKER_CONCURRENCY": str(config.concurrency),
            "IMAGEGEN_POLL_AFTER_SECONDS": "5",
            "IMAGEGEN_LOG_LEVEL": "WARNING",
        }
        if side == "after":  # settings the BEFORE code does not have (left at their defaults
            # but the breaker's reopening, shortened so that A's backlog drains within the run)
            env["IMAGEGEN_NOTIFY_BREAKER_OPEN_SECONDS"] = str(max(5.0, config.notify_timeout))
        migrate = children.start("migrate", ["migrate"], env)
        if await asyncio.to_thread(migrate.wait) != 0:
            raise RuntimeError(f"migrate failed: see {logs}/migrate.log")
        gateway = children.start("gateway", ["serve", "--port", str(api_port)], env)
        await wait_http(f"{sim_url}/_sim/stats", simulator)
        await wait_http(f"{api_url}/readyz", gateway)
        yield sim_url, api_url
    finally:
        await asyncio.to_thread(children.stop_all)


async def submit(
    client: httpx.AsyncClient, api: str, key: str, count: int, tag: str, notify_url: str | None
) -> list[str]:
    gate = asyncio.Semaphore(32)

    async def one(index: int) -> str:
        body: dict[str, Any] = {"prompt": f"{tag} {index}", "size": "1:1", "quality": "low"}
        if notify_url is not None:
            body["notify_url"] = f"{notify_url}/hooks/{index}"
        async with gate:
            answer = await client.post(
                f"{api}/v1/images/generations",
                json=body,
                headers={"Authorization": f"Bearer {key}", "Idempotency-Key": f"{tag}-{index}"},
            )
        answer.raise_for_status()
        task_id: str = answer.json()["id"]
        return task_id

    return list(await asyncio.gather(*(one(index) for index in range(count))))


async def until(what: str, check: Any, limit: float, every: float = 1.0) -> None:
    deadline = time.monotonic() + limit
    last_said = 0.0
    while True:
        done, note = await check()
        if done:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not done in {limit}s ({note})")
        if time.monotonic() - last_said > 15:
            say(f"  waiting for {what}: {note}")
            last_said = time.monotonic()
        await asyncio.sleep(every)


async def one_run(
    config: BenchConfig, side: str, code: Path, loaded: bool, work: Path, server: str
) -> Outcome:
    scenario = f"A: {config.a_tasks} slow-notify tasks" if loaded else "idle"
    if loaded and config.b_when_notifying:
        scenario += ", B once they hang"
    outcome = Outcome(side, scenario, code=code_of(code))
    logs = work / f"{side}-{'loaded' if loaded else 'idle'}"
    logs.mkdir(parents=True, exist_ok=True)
    receiver = SlowReceiver()
    started = time.monotonic()
    async with (
        fresh_database(server, keep=False) as database_url,
        serve_app(receiver) as receiver_url,
        stack(config, side, code, logs, database_url) as (sim_url, api),
        httpx.AsyncClient(timeout=60.0) as client,
    ):
        say(f"{side} / {scenario}: stack up")
        if loaded:
            await submit(client, api, KEY_A, config.a_tasks, "a", receiver_url)
            if config.b_when_notifying:

                async def hanging() -> tuple[bool, str]:
                    return receiver.held >= config.concurrency, f"{receiver.held} held"

                await until("A's notifications to hang", hanging, config.drain_timeout)
        b_ids = await submit(client, api, KEY_B, config.b_tasks, "b", None)
        db = await asyncpg.connect(**asyncpg_args(database_url))
        try:

            async def b_done() -> tuple[bool, str]:
                rows = await db.fetch(
                    "SELECT status, count(*) AS n FROM tasks WHERE id = ANY($1) GROUP BY status",
                    b_ids,
                )
                counts = {row["status"]: row["n"] for row in rows}
                open_b = sum(n for status, n in counts.items() if status not in TERMINAL)
                return open_b == 0, f"B: {counts}"

            await until("B's tasks", b_done, config.drain_timeout)
            upstream = {
                task["id"]: task["final_at"]
                for task in (await client.get(f"{sim_url}/_sim/tasks")).json()
            }
            rows = await db.fetch(
                "SELECT t.provider_task_id, t.completed_at, t.status, min(e.at) AS archiving_at"
                " FROM tasks t LEFT JOIN task_events e"
                " ON e.task_id = t.id AND e.to_status = 'archiving'"
                " WHERE t.id = ANY($1) GROUP BY t.id",
                b_ids,
            )
            for row in rows:
                final_at = upstream.get(row["provider_task_id"])
                if row["status"] != "succeeded" or final_at is None:
                    outcome.b_missing += 1
                    continue
                completed = row["completed_at"].timestamp()
                outcome.b_latencies.append(completed - final_at)
                if row["archiving_at"] is not None:
                    archiving = row["archiving_at"].timestamp()
                    outcome.b_to_archiving.append(archiving - final_at)
                    outcome.b_archiving.append(completed - archiving)
            p50, p99 = outcome.p(0.5), outcome.p(0.99)
            say(f"{side} / {scenario}: B done, p50 {p50:.2f} s p99 {p99:.2f} s")
            if loaded:
                await drain_a(config, db, receiver, outcome)
        finally:
            await db.close()
    outcome.seconds = time.monotonic() - started
    return outcome


async def drain_a(
    config: BenchConfig, db: asyncpg.Connection, receiver: SlowReceiver, outcome: Outcome
) -> None:
    """A's receiver recovers once B is done; wait for every A task to be terminal and every
    notification to be delivered or given up."""
    receiver.recover()
    outcome.a_held_requests = receiver.held

    async def a_done() -> tuple[bool, str]:
        rows = await db.fetch(
            "SELECT t.status, n.state, count(*) AS n FROM tasks t"
            " LEFT JOIN notifications n ON n.task_id = t.id"
            " WHERE t.caller = 'a' GROUP BY t.status, n.state"
        )
        open_tasks = sum(r["n"] for r in rows if r["status"] not in TERMINAL)
        pending = sum(r["n"] for r in rows if r["state"] in (None, "pending"))
        return open_tasks == 0 and pending == 0, f"{[tuple(r) for r in rows]}"

    try:
        await until("A's backlog", a_done, config.drain_timeout, every=2.0)
    finally:
        rows = await db.fetch(
            "SELECT t.status, n.state, count(*) AS n FROM tasks t"
            " LEFT JOIN notifications n ON n.task_id = t.id"
            " WHERE t.caller = 'a' GROUP BY t.status, n.state"
        )
        outcome.a_terminal = sum(r["n"] for r in rows if r["status"] in TERMINAL)
        outcome.a_delivered = sum(r["n"] for r in rows if r["state"] == "delivered")
        outcome.a_given_up = sum(r["n"] for r in rows if r["state"] == "failed")
        outcome.a_pending = sum(r["n"] for r in rows if r["state"] in (None, "pending"))


async def run_all(config: BenchConfig) -> str:
    server = os.environ.get(databases.ENV_URL) or DEFAULT_SERVER
    work = config.workdir or Path(tempfile.mkdtemp(prefix="imagegen-fairness-"))
    work.mkdir(parents=True, exist_ok=True)
    say(f"fairness: logs in {work}; run {uuid.uuid4().hex[:6]}")
    outcomes: list[Outcome] = []
    with contextlib.ExitStack() as exits:
        for side in config.sides:
            code = (
                ROOT
                if side == "after"
                else exits.enter_context(before_checkout(config.before_ref, work))
            )
            for loaded in (False, True):
                outcomes.append(await one_run(config, side, code, loaded, work, server))
    return table(config, outcomes)


def table(config: BenchConfig, outcomes: list[Outcome]) -> str:
    idle = {o.side: o for o in outcomes if o.scenario == "idle"}
    lines = [
        f"caller A: {config.a_tasks} tasks whose notify_url holds each request until the "
        f"gateway's timeout ({config.notify_timeout:g} s); caller B: {config.b_tasks} tasks; "
        f"{config.concurrency} worker slots; simulated task {config.task_seconds:g} s",
        "",
        "| code | scenario | B p50 (s) | B p99 (s) | B p99 / idle p99 | B not succeeded "
        "| A terminal | A notifications delivered / given up / pending | A requests held "
        "| run (s) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    parts = [
        "",
        "B's latency in parts, p50 / p99 (s): provider completion -> the gateway applies it "
        "(`archiving`), then the archive copy (`archiving` -> `succeeded`)",
        "",
        "| code | scenario | completion -> archiving | archiving -> succeeded |",
        "| --- | --- | ---: | ---: |",
    ]
    for o in outcomes:
        base = idle.get(o.side)
        ratio = o.p(0.99) / base.p(0.99) if base and base.b_latencies else float("nan")
        a_cols = (
            (f"{o.a_terminal}", f"{o.a_delivered} / {o.a_given_up} / {o.a_pending}",
             f"{o.a_held_requests}")
            if o.scenario != "idle"
            else ("", "", "")
        )  # fmt: skip
        lines.append(
            f"| {o.side.upper()} ({o.code}) | {o.scenario} | {o.p(0.5):.2f} | {o.p(0.99):.2f} "
            f"| {ratio:.2f}x | {o.b_missing} | {a_cols[0]} | {a_cols[1]} | {a_cols[2]} "
            f"| {o.seconds:.0f} |"
        )
        parts.append(
            f"| {o.side.upper()} ({o.code}) | {o.scenario} "
            f"| {o.p(0.5, o.b_to_archiving):.2f} / {o.p(0.99, o.b_to_archiving):.2f} "
            f"| {o.p(0.5, o.b_archiving):.2f} / {o.p(0.99, o.b_archiving):.2f} |"
        )
    return "\n".join(lines + parts)
