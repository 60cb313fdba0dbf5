"""The runs: per rate, per database, per code tree and mode, a fresh stack driven by open-loop
creates; the bare pipeline beside them; then the table."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx

from bench.fairness.run import DEFAULT_SERVER, ROOT, before_checkout, code_of
from tests.support import databases

from . import cpu
from .load import open_loop
from .report import RateResult, percentile, table
from .stacks import API_KEY, Stack, bare, database, gateway, simulator


def py_spy() -> str:
    """py-spy of this virtualenv (`pip install py-spy`), else the one on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if found is None:
        raise RuntimeError("--profile needs py-spy: .venv/bin/pip install py-spy")
    return found


IDLE_SECONDS = 2.0


@dataclass
class E2EConfig:
    rates: tuple[float, ...] = (10, 25, 50, 100, 150)
    seconds: float = 15.0
    databases: tuple[str, ...] = ("postgresql",)
    modes: tuple[str, ...] = ("one",)  # "one" (serve with its workers) and/or "split"
    before_ref: str | None = None
    task_seconds: float = 1.0  # simulated generation time
    drain_timeout: float = 120.0
    bare: bool = True
    gateway: bool = True
    profile: Path | None = None
    profile_rate: int = 100
    workdir: Path | None = None


def say(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


async def run_all(config: E2EConfig) -> str:
    server = os.environ.get(databases.ENV_URL) or DEFAULT_SERVER
    work = config.workdir or Path(tempfile.mkdtemp(prefix="imagegen-e2e-"))
    work.mkdir(parents=True, exist_ok=True)
    if config.profile is not None:
        config.profile.mkdir(parents=True, exist_ok=True)
    say(f"e2e: logs in {work}")
    results: list[RateResult] = []
    with contextlib.ExitStack() as exits:
        sides = [("after", ROOT)]
        if config.before_ref is not None:
            sides.append(("before", exits.enter_context(before_checkout(config.before_ref, work))))
        codes = {side: f"{side.upper()} {code_of(code)}" for side, code in sides}
        gateway_sides = sides if config.gateway else []
        # Rates outermost: BEFORE, AFTER and the bare pipeline of one rate run close in time,
        # so that the other load on the machine weighs on them alike.
        for rate in config.rates:
            for kind in config.databases:
                for side, code in gateway_sides:
                    for mode in config.modes:
                        result = RateResult(codes[side], _mode_name(mode), kind, rate)
                        label = f"{side}-{mode}-{kind}-{rate:g}"
                        await one_rate_or_say(config, result, label, work, server, code)
                        results.append(result)
                if config.bare:
                    result = RateResult("bare", "bare", kind, rate)
                    label = f"bare-{kind}-{rate:g}"
                    await one_rate_or_say(config, result, label, work, server, None)
                    results.append(result)
    return table(results)


def _mode_name(mode: str) -> str:
    return "split" if mode == "split" else "one process"


async def one_rate_or_say(
    config: E2EConfig, result: RateResult, label: str, work: Path, server: str, code: Path | None
) -> None:
    """One rate; a run that broke (a process that did not start, say) is said and left in the
    table as not held, and the other runs go on."""
    try:
        await one_rate(config, result, label, work, server, code)
    except (OSError, RuntimeError, httpx.HTTPError, asyncpg.PostgresError, sqlite3.Error) as error:
        result.drain = None
        say(f"{label}: FAILED: {type(error).__name__}: {error} (logs in {work / label})")


async def one_rate(
    config: E2EConfig, result: RateResult, label: str, work: Path, server: str, code: Path | None
) -> None:
    """One fresh stack (the gateway from `code`, or the bare pipeline when None) at one rate."""
    logs = work / label
    logs.mkdir(parents=True, exist_ok=True)
    async with (
        database(result.db, server, logs) as database_url,
        simulator(logs, config.task_seconds) as (sim_url, sim_pid),
    ):
        target = (
            gateway(code, logs, database_url, result.mode == "split", sim_url, sim_pid)
            if code is not None
            else bare(logs, database_url, sim_url, sim_pid)
        )
        async with target as stack:
            pids = ", ".join(f"{name} {pid}" for name, pid in stack.pids.items())
            say(
                f"{label}: up; pids: {pids}, simulator {sim_pid}; {result.rate:g}/s "
                f"for {config.seconds:g} s"
            )
            await measure(config, result, label, stack)
    p99 = percentile(result.latencies, 0.99)
    drained = "not drained" if result.drain is None else f"drain {result.drain:.1f} s"
    say(
        f"{label}: {result.succeeded}/{result.sent} succeeded, p99 {1000 * p99:.0f} ms, "
        f"{drained}, held {result.held}"
    )


async def measure(config: E2EConfig, result: RateResult, label: str, stack: Stack) -> None:
    roots = stack.pids | {"simulator": stack.simulator_pid}
    # The service's CPU while idle (job polls and the like), said beside the table's figures:
    # at low rates it is a large part of the CPU per task.
    idle_from = cpu.sample(roots)
    await asyncio.sleep(IDLE_SECONDS)
    before = cpu.sample(roots)
    idle = cpu.used(idle_from, before)
    idle_ms = ", ".join(
        f"{name} {1000 * idle.trees[name] / IDLE_SECONDS:.0f}" for name in stack.pids
    )
    say(f"{label}: idle CPU ms/s: {idle_ms}")
    profilers = await start_profilers(config, label, stack)
    load = await open_loop(stack.url, API_KEY, result.rate, config.seconds, label)
    result.sent = load.sent
    drained = await drain(config, stack, load.accepted)
    spent = cpu.used(before, cpu.sample(roots))
    for profiler in profilers:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(profiler.wait(), timeout=30)
    result.service_cpu = {name: spent.trees[name] for name in stack.pids}
    result.machine_cpu = spent.machine
    refused = dict(load.errors) or "none"
    say(f"{label}: simulator CPU {spent.trees['simulator']:.1f} s; creates not accepted: {refused}")
    async with httpx.AsyncClient(timeout=60.0) as client:
        upstream = {
            task["id"]: task["final_at"]
            for task in (await client.get(f"{stack.simulator_url}/_sim/tasks")).json()
        }
    rows = await stack.rows.finished()
    result.tasks = len(rows)
    last = 0.0
    for status, provider_id, completed_at in rows:
        if completed_at is not None:
            last = max(last, completed_at)
        final_at = upstream.get(provider_id) if provider_id else None
        if status != "succeeded" or completed_at is None or final_at is None:
            continue
        result.succeeded += 1
        result.latencies.append(completed_at - final_at)
    if drained and last:
        result.drain = max(0.0, last - load.last_sent_at)


async def drain(config: E2EConfig, stack: Stack, accepted: int) -> bool:
    """Until every accepted task is terminal (False at the timeout)."""
    deadline = time.monotonic() + config.drain_timeout
    said = time.monotonic()
    while time.monotonic() < deadline:
        total, unfinished = await stack.rows.counts()
        if total >= accepted and unfinished == 0:
            return True
        if time.monotonic() - said > 15:
            say(f"  draining: {unfinished} of {total} tasks not terminal")
            said = time.monotonic()
        await asyncio.sleep(0.25)
    return False


async def start_profilers(
    config: E2EConfig, label: str, stack: Stack
) -> list[asyncio.subprocess.Process]:
    """py-spy on each service process for the load window (raw collapsed stacks)."""
    if config.profile is None:
        return []
    profilers = []
    for name, pid in stack.pids.items():
        out = config.profile / f"{label}-{name}.txt"
        args = [
            "record",
            "--pid",
            str(pid),
            "--rate",
            str(config.profile_rate),
            "--format",
            "raw",
            "-o",
            str(out),
        ]
        # --nonblocking: sample without pausing the process, so the profile does not add
        # latency to the run it measures.
        args += ["--duration", str(math.ceil(config.seconds)), "--subprocesses", "--nonblocking"]
        profilers.append(
            await asyncio.create_subprocess_exec(
                py_spy(),
                *args,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
        )
        say(f"{label}: py-spy on {name} ({pid}) -> {out}")
    return profilers
