"""Headers that every answer of the gateway carries, added in one place (`GatewayApp`)."""

from __future__ import annotations

from typing import Final

from starlette.types import Message, Send

# Callers get images (and uploads, and reference images) whose bytes came from outside: a
# browser must take the declared Content-Type, never sniff an HTML or script body out of them.
NOSNIFF: Final = (b"x-content-type-options", b"nosniff")


def with_nosniff(send: Send) -> Send:
    """`send`, adding `X-Content-Type-Options: nosniff` to the answer unless it has it."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", ()))
            if not any(name.lower() == NOSNIFF[0] for name, _ in headers):
                message = {**message, "headers": [*headers, NOSNIFF]}
        await send(message)

    return sending
