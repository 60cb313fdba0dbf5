"""Headers that every answer of the gateway carries, added in one place (`GatewayApp`), and
the one check of the `Idempotency-Key` request header (creates and uploads)."""

from __future__ import annotations

from typing import Final

from starlette.types import Message, Send

from app.core.errors import ApiProblem

MAX_IDEMPOTENCY_KEY_CHARS: Final = 255

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


def checked_idempotency_key(value: str | None) -> str | None:
    """An `Idempotency-Key` header's value, or 422 unless 1 to 255 printable ASCII characters."""
    if value is None:
        return None
    # Header bytes arrive as Latin-1: anything but ASCII would be stored as mojibake.
    length_ok = 0 < len(value) <= MAX_IDEMPOTENCY_KEY_CHARS
    if not (length_ok and value.isascii() and value.isprintable()):
        raise ApiProblem(
            422,
            "validation_error",
            f"Idempotency-Key: must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} printable ASCII characters",
        )
    return value
