"""A caller's notification endpoint on real HTTP, with a signature check written from the
Standard Webhooks specification alone (not the standardwebhooks package)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from tests.conftest import NOTIFY_SECRET
from tests.support.servers import serve_app

HANG = "hang"  # an answer: keep the request open until the sender gives up


def signature_is_valid(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """The spec's check: HMAC-SHA256 over `{id}.{timestamp}.{body}` with the base64-decoded
    key after `whsec_`, base64 in a `v1,` entry of the space-separated signature header."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    webhook_id, timestamp = headers.get("webhook-id", ""), headers.get("webhook-timestamp", "")
    if not webhook_id or not timestamp.isdigit():
        return False
    signed = webhook_id.encode() + b"." + timestamp.encode() + b"." + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest())
    for entry in headers.get("webhook-signature", "").split(" "):
        version, _, value = entry.partition(",")
        if version == "v1" and hmac.compare_digest(value.encode(), expected):
            return True
    return False


@dataclass
class Delivery:
    """One request the receiver got."""

    headers: dict[str, str]
    body: bytes
    received_at: float

    @property
    def valid(self) -> bool:
        return signature_is_valid(NOTIFY_SECRET, self.headers, self.body)

    @property
    def message(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]


@dataclass
class Receiver:
    """Answers each POST with the next planned status (or `HANG`), then with `default`."""

    url: str = ""
    default: int | str = 204
    plan: list[int | str] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        self.deliveries.append(Delivery(headers, body, time.time()))
        answer = self.plan.pop(0) if self.plan else self.default
        if answer == HANG:
            while (await receive())["type"] != "http.disconnect":
                pass
            return
        assert isinstance(answer, int)
        await send({"type": "http.response.start", "status": answer, "headers": []})
        await send({"type": "http.response.body", "body": b""})


@contextlib.asynccontextmanager
async def receiving(default: int | str = 204) -> AsyncIterator[Receiver]:
    """A receiver on a free loopback port; its `url` is the notify_url to give."""
    receiver = Receiver(default=default)
    async with serve_app(receiver) as base:
        receiver.url = f"{base}/hooks/imagegen"
        yield receiver
