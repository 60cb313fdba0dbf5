"""Callback delivery with the provider's timeout, retry schedule and delivery faults."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from app.core.urls import is_under

if TYPE_CHECKING:
    from .stats import SimulatorStats

USER_AGENT = "evolink-simulator/1.0"


@dataclass(frozen=True, slots=True)
class CallbackPolicy:
    """Per-attempt timeout and the waits after each failed attempt (3 retries: 4 attempts)."""

    timeout: float = 10.0
    retry_delays: tuple[float, ...] = (1.0, 2.0, 4.0)


class CallbackSender:
    """POSTs task bodies to callback URLs over one shared client and logs every delivery.

    The client ignores proxy variables (HTTP(S)_PROXY, ALL_PROXY): callbacks go straight to
    their URL. With `only_under` (the simulator built into a gateway) a URL elsewhere is never
    sent to."""

    def __init__(
        self,
        stats: SimulatorStats,
        policy: CallbackPolicy | None = None,
        *,
        only_under: str | None = None,
    ) -> None:
        self.policy = policy or CallbackPolicy()
        self._stats = stats
        self._only_under = only_under
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        """Open the HTTP client."""
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.policy.timeout),
                limits=httpx.Limits(max_connections=256, max_keepalive_connections=32),
                follow_redirects=False,
                trust_env=False,
                headers={"User-Agent": USER_AGENT},
            )

    async def aclose(self) -> None:
        """Close the HTTP client."""
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def deliver(
        self,
        url: str,
        body: dict[str, Any],
        log: list[dict[str, Any]],
        *,
        duplicates: int = 1,
        stale: dict[str, Any] | None = None,
    ) -> bool:
        """Send `body` until an attempt gets a 2xx or the retries run out; then maybe `stale`."""
        if self._only_under is not None and not is_under(url, self._only_under):
            self._stats.callbacks_given_up += 1
            log.append(
                {
                    "at": time.time(),
                    "attempt": 1,
                    "status": None,
                    "error": f"refused: not below {self._only_under}, not sent",
                    "body_status": body.get("status"),
                    "elapsed": 0.0,
                }
            )
            return False
        delays = iter(self.policy.retry_delays)
        attempt = 1
        while not await self._attempt(url, body, log, attempt, duplicates):
            delay = next(delays, None)
            if delay is None:
                self._stats.callbacks_given_up += 1
                return False
            await asyncio.sleep(delay)
            attempt += 1
        self._stats.callbacks_delivered += 1
        if stale is not None:
            self._stats.callbacks_stale += 1
            await self._post(url, stale, log, attempt + 1)
        return True

    async def _attempt(
        self, url: str, body: dict[str, Any], log: list[dict[str, Any]], attempt: int, copies: int
    ) -> bool:
        """One attempt: `copies` concurrent POSTs; it succeeds when any of them got a 2xx."""
        outcomes = await asyncio.gather(
            *(self._post(url, body, log, attempt) for _ in range(copies))
        )
        return any(outcomes)

    async def _post(
        self, url: str, body: dict[str, Any], log: list[dict[str, Any]], attempt: int
    ) -> bool:
        """One POST within the attempt timeout; records it in `log` and the stats."""
        if self._client is None:
            raise RuntimeError("CallbackSender.start() was not called")
        at = time.time()
        started = time.monotonic()
        status: int | None = None
        error: str | None = None
        self._stats.callbacks_sent += 1
        try:
            async with asyncio.timeout(self.policy.timeout):
                response = await self._client.post(url, json=body)
            status = response.status_code
        except (TimeoutError, httpx.TimeoutException):
            error = "timeout"
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            error = f"{type(exc).__name__}: {exc}".rstrip(": ")
        ok = status is not None and 200 <= status < 300
        if ok:
            self._stats.callbacks_ok += 1
        else:
            self._stats.callbacks_failed += 1
        log.append(
            {
                "at": at,
                "attempt": attempt,
                "status": status,
                "error": error,
                "body_status": body.get("status"),
                "elapsed": round(time.monotonic() - started, 4),
            }
        )
        return ok
