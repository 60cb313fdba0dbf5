"""The balance poller: a loop in every worker process; whichever takes the period's lease reads
`GET /v1/credits` and stores the reading for every replica (app/balance/repository.py).

- One poll per period across all replicas: the lease `provider-credits` is taken for the whole
  period (app/workers/leases.py), so the others find it held until the next period.
- Below `IMAGEGEN_PROVIDER_CREDITS_WARN_BELOW`: one WARNING line per reading.
- A failed reading (401, 5xx, timeout, an unreadable answer) keeps the last good one, notes the
  error, and logs a WARNING once per failing streak (the streak is kept in the row, so it spans
  replicas); the first good reading after it logs that reading works again."""

from __future__ import annotations

import asyncio
import logging
import random
from datetime import datetime, timedelta
from typing import Final, Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.balance import repository
from app.core.clock import utcnow
from app.provider.credits import ProviderCredits
from app.provider.types import ProviderCallError
from app.workers import leases

log = logging.getLogger(__name__)

LEASE: Final = "provider-credits"
MAX_CHECK_EVERY: Final = timedelta(minutes=1)


class CreditsSource(Protocol):
    """What the poller reads (EvolinkClient)."""

    async def get_credits(self) -> ProviderCredits: ...


class BalancePoller:
    """Checks every fifth of the period (at most every minute, with jitter) whether the period's
    lease is free; the process that takes it polls."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        provider: CreditsSource,
        *,
        every: timedelta,
        warn_below: float | None,
        holder: str,
    ) -> None:
        self._sessions = sessions
        self._provider = provider
        self._every = every
        self._warn_below = warn_below
        self._holder = holder

    async def run(self, stop: asyncio.Event) -> None:
        """Poll when due until `stop` is set."""
        loop = asyncio.get_running_loop()
        check_every = min(self._every / 5, MAX_CHECK_EVERY).total_seconds()
        while not stop.is_set():
            await self.tick()
            waiter = loop.create_task(stop.wait())
            await asyncio.wait({waiter}, timeout=check_every * random.uniform(0.9, 1.1))
            waiter.cancel()

    async def tick(self, now: datetime | None = None) -> bool:
        """Poll if this process takes the period's lease; True when it did. Never raises."""
        now = now or utcnow()
        try:
            async with self._sessions.begin() as session:
                taken = await leases.take(session, LEASE, self._holder, now, self._every)
            if taken:
                await self._poll(now)
        except Exception:
            log.exception("the provider balance poll failed; it runs again at the next tick")
            return False
        return taken

    async def _poll(self, now: datetime) -> None:
        try:
            credits = await self._provider.get_credits()
        except ProviderCallError as exc:
            await self._failed(exc, now)
            return
        async with self._sessions.begin() as session:
            recovered = await repository.record_reading(session, credits, now)
        if recovered:
            log.info("the provider's balance can be read again")
        lowest = credits.lowest_limited()
        if self._warn_below is not None and lowest is not None and lowest < self._warn_below:
            log.warning(
                "provider balance below the threshold: %s credits left, warning below %s",
                lowest,
                self._warn_below,
                extra={
                    "provider_credits": lowest,
                    "threshold": self._warn_below,
                    "token_remaining": credits.token.remaining,
                    "user_remaining": credits.user.remaining,
                },
            )

    async def _failed(self, exc: ProviderCallError, now: datetime) -> None:
        status = f"HTTP {exc.status_code}: " if exc.status_code else ""
        error = f"{status}{exc.message}"[:500]
        async with self._sessions.begin() as session:
            started = await repository.record_failure(session, error, now)
        if started:
            log.warning(
                "could not read the provider's balance: %s (logged once until it works again)",
                error,
                extra={"error": error, "http_status": exc.status_code},
            )
