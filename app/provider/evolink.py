"""The one thin client of EvoLink's task API: create, query and the account's credits, with
error mapping."""

from __future__ import annotations

import httpx

from app.provider.calls import NOT_SENT, checked_body, describe, measured
from app.provider.credits import ProviderCredits, parse_credits
from app.provider.parsing import ProviderBodyError, parse_task
from app.provider.types import (
    CreateTaskRequest,
    ProviderOutcomeUnknown,
    ProviderRejected,
    ProviderTask,
    ProviderUnavailable,
    is_provider_task_id,
)

CREATE_TIMEOUT = httpx.Timeout(connect=5.0, read=30.0, write=10.0, pool=5.0)
QUERY_TIMEOUT = httpx.Timeout(connect=5.0, read=15.0, write=10.0, pool=5.0)
CREDITS_TIMEOUT = QUERY_TIMEOUT


class EvolinkClient:
    """Calls the upstream through the process's shared `httpx.AsyncClient`."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        base_url: str,
        api_key: str,
        *,
        create_read_timeout: float = 30.0,
    ) -> None:
        self._http = http
        self._create_timeout = CREATE_TIMEOUT.__class__(
            connect=CREATE_TIMEOUT.connect,
            read=create_read_timeout,
            write=CREATE_TIMEOUT.write,
            pool=CREATE_TIMEOUT.pool,
        )
        self._base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}

    async def create_task(self, request: CreateTaskRequest) -> ProviderTask:
        """Submit a task. Raises ProviderRejected, ProviderUnavailable or ProviderOutcomeUnknown."""
        with measured("create"):
            return await self._create_task(request)

    async def get_task(self, task_id: str) -> ProviderTask:
        """Query a task. Raises ProviderRejected or ProviderUnavailable."""
        with measured("query"):
            return await self._get_task(task_id)

    async def get_credits(self) -> ProviderCredits:
        """The balance of the key and of the account. Raises ProviderRejected or
        ProviderUnavailable; logs nothing (the balance poller logs a failing streak once)."""
        with measured("credits"):
            return await self._get_credits()

    async def _get_credits(self) -> ProviderCredits:
        url = f"{self._base_url}/v1/credits"
        try:
            response = await self._http.get(url, headers=self._headers, timeout=CREDITS_TIMEOUT)
        except httpx.HTTPError as exc:
            raise ProviderUnavailable(f"reading the credits failed: {describe(exc)}") from exc
        body = checked_body(response, quiet=True)
        try:
            return parse_credits(body)
        except ProviderBodyError as exc:
            raise ProviderUnavailable(
                f"unreadable credits from the provider: {exc}", status_code=response.status_code
            ) from exc

    async def _create_task(self, request: CreateTaskRequest) -> ProviderTask:
        url = f"{self._base_url}/v1/images/generations"
        try:
            response = await self._http.post(
                url, json=request.to_json(), headers=self._headers, timeout=self._create_timeout
            )
        except NOT_SENT as exc:
            raise ProviderUnavailable(f"cannot reach the provider: {describe(exc)}") from exc
        except httpx.HTTPError as exc:
            raise ProviderOutcomeUnknown(
                f"the create request may have reached the provider, but no answer came back: "
                f"{describe(exc)}"
            ) from exc
        if response.status_code == 504:
            raise ProviderOutcomeUnknown(
                "the provider's gateway timed out; the task may exist", status_code=504
            )
        body = checked_body(response)
        try:
            created = parse_task(body)
        except ProviderBodyError as exc:
            raise ProviderOutcomeUnknown(
                f"the provider accepted the create but its answer is unreadable: {exc}",
                status_code=response.status_code,
            ) from exc
        if not is_provider_task_id(created.id):
            # Never recorded (it could never be queried); the callback may bring the real id.
            raise ProviderOutcomeUnknown(
                f"the provider accepted the create but named no usable task id: "
                f"{created.id[:80]!r}",
                status_code=response.status_code,
            )
        return created

    async def _get_task(self, task_id: str) -> ProviderTask:
        if not is_provider_task_id(task_id):
            raise ProviderRejected(
                f"not a provider task id: {task_id[:80]!r}", code="invalid_task_id"
            )
        url = f"{self._base_url}/v1/tasks/{task_id}"
        try:
            response = await self._http.get(url, headers=self._headers, timeout=QUERY_TIMEOUT)
        except httpx.HTTPError as exc:
            raise ProviderUnavailable(f"querying the provider failed: {describe(exc)}") from exc
        body = checked_body(response)
        try:
            return parse_task(body)
        except ProviderBodyError as exc:
            raise ProviderUnavailable(f"unreadable task from the provider: {exc}") from exc
