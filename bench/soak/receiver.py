"""The notification receiver: verifies and records every delivery, fails a share of them."""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .config import NOTIFY_SECRET


@dataclass
class Delivery:
    """One notification POST the receiver got."""

    webhook_id: str
    type: str
    task_id: str
    task_status: str
    answered: int
    verified: bool
    after_success: bool
    at: float = 0.0  # wall clock of the answer


class Receiver:
    """Records every notification by webhook-id; answers 503 to a share of first deliveries."""

    def __init__(self, fail_rate: float, seed: int | None) -> None:
        from standardwebhooks.webhooks import Webhook

        self.deliveries: list[Delivery] = []
        self.delivered: set[str] = set()  # webhook-ids answered 2xx
        self._seen: set[str] = set()
        self._fail_rate = fail_rate
        self._rng = random.Random(seed)
        self._webhook = Webhook(NOTIFY_SECRET)
        self.app = Starlette(routes=[Route("/hooks/{index:int}", self._hook, methods=["POST"])])

    async def _hook(self, request: Request) -> Response:
        body = await request.body()
        names = ("webhook-id", "webhook-timestamp", "webhook-signature")
        headers = {name: request.headers.get(name, "") for name in names}
        webhook_id = headers["webhook-id"]
        try:
            self._webhook.verify(body, headers)
            verified = True
        except Exception:  # any failure to verify is recorded as such
            verified = False
        try:
            message = json.loads(body)
            kind, data = str(message["type"]), message["data"]
            task_id, task_status = str(data["id"]), str(data["status"])
        except (ValueError, KeyError, TypeError):
            kind = task_id = task_status = "?"
        first = webhook_id not in self._seen
        self._seen.add(webhook_id)
        answer = 503 if first and self._rng.random() < self._fail_rate else 204
        self.deliveries.append(
            Delivery(
                webhook_id,
                kind,
                task_id,
                task_status,
                answer,
                verified,
                webhook_id in self.delivered,
                time.time(),
            )
        )
        if answer == 204:
            self.delivered.add(webhook_id)
        return Response(status_code=answer)
