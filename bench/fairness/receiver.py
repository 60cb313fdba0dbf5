"""Caller A's notify endpoint: holds every request until the sender gives up (its timeout),
until `recover()`; then answers 204 at once. Counts what it got, per task."""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from typing import Any


class SlowReceiver:
    """An ASGI app."""

    def __init__(self) -> None:
        self.slow = True
        self.held = 0  # requests held until the sender gave up
        self.answered: Counter[str] = Counter()  # task id -> 204s sent

    def recover(self) -> None:
        self.slow = False

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
        if self.slow:
            self.held += 1
            while (await receive())["type"] != "http.disconnect":
                pass
            return
        with contextlib.suppress(ValueError, KeyError, TypeError):
            self.answered[json.loads(body)["data"]["id"]] += 1
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
