"""The process's one shared outbound HTTP client."""

from __future__ import annotations

import httpx

DEFAULT_TIMEOUT = httpx.Timeout(connect=5.0, read=30.0, write=10.0, pool=5.0)
DEFAULT_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)


def create_http_client() -> httpx.AsyncClient:
    """Explicit timeouts and limits; no redirects followed; no proxies from the environment."""
    return httpx.AsyncClient(
        timeout=DEFAULT_TIMEOUT,
        limits=DEFAULT_LIMITS,
        follow_redirects=False,
        trust_env=False,
        headers={"User-Agent": "imagegen-gateway/0.1"},
    )
