"""The balance poller against the simulator: one poll per period across replicas, the reading
stored for every replica, the low-balance warning once per reading, a failing streak logged
once and the last good reading kept."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import datetime, timedelta

import httpx
import pytest
from pydantic import ValidationError

from app.balance import repository
from app.balance.polling import BalancePoller
from app.balance.repository import BalanceView
from app.core.clock import utcnow
from app.core.config import Settings
from app.core.db import create_engine, create_sessionmaker
from app.provider.evolink import EvolinkClient
from app.provider.simulator import Simulator, SimulatorConfig
from app.runtime import Runtime
from tests.conftest import settings_values
from tests.simulator.helpers import API_KEY, serve
from tests.support.waiting import until

Tick = Callable[[datetime | None], Awaitable[bool]]

PERIOD = timedelta(minutes=5)
START = utcnow()


@asynccontextmanager
async def simulator(**config: object) -> AsyncIterator[Simulator]:
    sim = Simulator(SimulatorConfig(**config))  # type: ignore[arg-type]
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


@asynccontextmanager
async def replicas(
    database_url: str, sim: Simulator, count: int, *, key: str = API_KEY, warn_below: float | None
) -> AsyncIterator[list[BalancePoller]]:
    """`count` pollers, each with its own engine and HTTP client, like separate processes."""
    async with AsyncExitStack() as stack:
        pollers = []
        for n in range(count):
            engine = create_engine(database_url)
            stack.push_async_callback(engine.dispose)
            http = await stack.enter_async_context(
                httpx.AsyncClient(transport=httpx.ASGITransport(app=sim.app))
            )
            client = EvolinkClient(http, "http://sim.test", key)
            pollers.append(
                BalancePoller(
                    create_sessionmaker(engine),
                    client,
                    every=PERIOD,
                    warn_below=warn_below,
                    holder=f"replica-{n}",
                )
            )
        yield pollers


async def stored(database_url: str) -> BalanceView | None:
    engine = create_engine(database_url)
    try:
        async with create_sessionmaker(engine)() as session:
            return await repository.latest(session)
    finally:
        await engine.dispose()


def lines(caplog: pytest.LogCaptureFixture, start: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith(start)]


async def test_one_replica_polls_per_period(database_url: str) -> None:
    async with (
        simulator(credits=500.0) as sim,
        replicas(database_url, sim, 3, warn_below=None) as pollers,
    ):
        for period in range(4):
            at = START + PERIOD * period
            # Every replica ticks several times in the period, some at once.
            for offset in (timedelta(0), timedelta(seconds=30), PERIOD - timedelta(seconds=1)):
                polled = await asyncio.gather(*(p.tick(at + offset) for p in pollers))
                assert sum(polled) == (1 if offset == timedelta(0) else 0)
            assert sim.engine.stats.credits_queries == period + 1
    reading = await stored(database_url)
    assert reading is not None
    assert (reading.user_remaining, reading.token_remaining) == (500.0, 500.0)
    assert (reading.token_unlimited, reading.error) == (False, None)
    assert reading.read_at == START + PERIOD * 3


async def test_the_runtime_polls_the_simulator_over_http(database_url: str) -> None:
    """Two runtimes (as two worker processes build them) on one database, the simulator a real
    server: each runs its poller loop; within one period exactly one of them has polled."""
    async with simulator(credits=42.5) as sim, serve(sim.app) as base_url:
        settings = Settings(
            **settings_values(
                database_url,
                provider_url=base_url,
                provider_credits_poll_seconds=3600,
                provider_credits_warn_below=100,
            )
        )
        runtimes = [Runtime.open(settings), Runtime.open(settings)]
        pollers = [runtime.build_balance_poller() for runtime in runtimes]
        ticks: list[bool] = []
        for poller in pollers:
            tick = poller.tick

            async def counted(now: datetime | None = None, tick: Tick = tick) -> bool:
                polled = await tick(now)
                ticks.append(polled)
                return polled

            poller.tick = counted  # type: ignore[method-assign]
        stop = asyncio.Event()
        loops = [asyncio.create_task(poller.run(stop)) for poller in pollers]
        try:
            # Each loop ticks once before it first waits (a fifth of the hour).
            await until(lambda: len(ticks) == 2, what="both pollers to tick")
        finally:
            stop.set()
            await asyncio.gather(*loops)
            for runtime in runtimes:
                await runtime.close()
    assert sorted(ticks) == [False, True]
    assert sim.engine.stats.credits_queries == 1
    reading = await stored(database_url)
    assert reading is not None
    assert reading.user_remaining == 42.5


async def test_a_low_balance_warns_once_per_reading(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with (
        simulator(credits=500.0) as sim,
        replicas(database_url, sim, 2, warn_below=100.0) as pollers,
    ):
        caplog.set_level(logging.INFO)
        await asyncio.gather(*(p.tick(START) for p in pollers))
        assert lines(caplog, "provider balance below") == []
        sim.engine.credits.remaining = 12.25
        for period in (1, 2):
            await asyncio.gather(*(p.tick(START + PERIOD * period) for p in pollers))
        warned = lines(caplog, "provider balance below")
        assert len(warned) == 2
        assert warned[0].levelno == logging.WARNING
        assert warned[0].getMessage() == (
            "provider balance below the threshold: 12.25 credits left, warning below 100.0"
        )
        # An unlimited key is not the limit: the account's balance is.
        sim.engine.credits.unlimited = True
        await pollers[0].tick(START + PERIOD * 3)
        assert len(lines(caplog, "provider balance below")) == 3


async def test_a_failing_streak_is_logged_once_and_keeps_the_last_reading(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with (
        simulator(credits=80.0) as sim,
        replicas(database_url, sim, 2, warn_below=None) as pollers,
    ):
        caplog.set_level(logging.INFO)
        await pollers[0].tick(START)
        sim.engine.config.faults = sim.engine.faults.updated({"down": True})
        for period in (1, 2, 3):
            polled = await asyncio.gather(*(p.tick(START + PERIOD * period) for p in pollers))
            assert sum(polled) == 1
        failed = lines(caplog, "could not read the provider's balance")
        assert len(failed) == 1
        assert failed[0].levelno == logging.WARNING
        assert "HTTP 503" in failed[0].getMessage()
        reading = await stored(database_url)
        assert reading is not None
        assert reading.error is not None
        assert reading.error.startswith("HTTP 503: ")
        assert (reading.read_at, reading.user_remaining) == (START, 80.0)
        assert reading.failing_since == START + PERIOD
        assert reading.attempted_at == START + PERIOD * 3

        sim.engine.config.faults = sim.engine.faults.updated({"down": False})
        await pollers[1].tick(START + PERIOD * 4)
        assert len(lines(caplog, "the provider's balance can be read again")) == 1
        reading = await stored(database_url)
        assert reading is not None
        assert (reading.error, reading.failing_since) == (None, None)
        assert reading.read_at == START + PERIOD * 4


async def test_a_wrong_key_is_a_failed_reading(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with (
        simulator() as sim,
        replicas(database_url, sim, 1, key="sk-evo-wrong", warn_below=None) as pollers,
    ):
        caplog.set_level(logging.INFO)
        for period in range(3):
            assert await pollers[0].tick(START + PERIOD * period)
    failed = lines(caplog, "could not read the provider's balance")
    assert len(failed) == 1
    assert "HTTP 401" in failed[0].getMessage()
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    reading = await stored(database_url)
    assert reading is not None
    assert (reading.read_at, reading.user_remaining) == (None, None)
    assert sim.engine.stats.unauthorized == 3


async def test_a_database_failure_does_not_end_the_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = create_engine("sqlite+aiosqlite:///file:nowhere?mode=ro&uri=true")
    try:
        async with (
            simulator() as sim,
            httpx.AsyncClient(transport=httpx.ASGITransport(app=sim.app)) as http,
        ):
            poller = BalancePoller(
                create_sessionmaker(engine),
                EvolinkClient(http, "http://sim.test", API_KEY),
                every=PERIOD,
                warn_below=None,
                holder="x",
            )
            assert await poller.tick(START) is False
    finally:
        await engine.dispose()
    assert lines(caplog, "the provider balance poll failed")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("provider_credits_poll_seconds", 0),
        ("provider_credits_poll_seconds", -5),
        ("provider_credits_warn_below", -1),
        ("provider_credits_warn_below", "nan"),
        ("provider_credits_warn_below", "lots"),
    ],
)
def test_bad_settings_are_refused(name: str, value: object) -> None:
    with pytest.raises(ValidationError, match=name):
        Settings(**(settings_values("sqlite+aiosqlite:///x.db") | {name: value}))
