"""A gateway with operators, and signing in to its console."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx

from app.core.config import Settings
from tests.conftest import settings_values
from tests.support.gateway import Gateway, running_gateway

OPERATOR_KEY = "operator-key-0123456789abcdef"
OTHER_OPERATOR_KEY = "root-operator-key-0123456789"
OPERATORS = f"ops:{OPERATOR_KEY},root:{OTHER_OPERATOR_KEY}"

_CSRF = re.compile(r'name="csrf" value="([^"]*)"')


def console_settings(database_url: str, **overrides: Any) -> Settings:
    """Test settings with two operators."""
    return Settings(**settings_values(database_url, **({"operator_keys": OPERATORS} | overrides)))


@contextlib.asynccontextmanager
async def running_console(database_url: str, **overrides: Any) -> AsyncIterator[Gateway]:
    """A gateway whose console is on."""
    async with running_gateway(console_settings(database_url, **overrides)) as gateway:
        yield gateway


def csrf_of(html: str) -> str:
    """The CSRF token of the first form of a page."""
    found = _CSRF.search(html)
    assert found is not None, "no csrf field on the page"
    return found.group(1)


async def login(client: httpx.AsyncClient, key: str = OPERATOR_KEY, **form: str) -> httpx.Response:
    """Fill in the sign-in form as a browser would."""
    page = await client.get("/console/login")
    assert page.status_code == 200
    data = {"key": key, "csrf": csrf_of(page.text)} | form
    return await client.post("/console/login", data=data)


async def signed_in(client: httpx.AsyncClient) -> str:
    """Sign in; the session's CSRF token."""
    response = await login(client)
    assert response.status_code == 303, response.text
    overview = await client.get("/console")
    assert overview.status_code == 200
    return csrf_of(overview.text)
