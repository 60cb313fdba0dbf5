"""`capped_receive`: a body of at most `limit` bytes, whether Content-Length declares it or the
chunks arrive without one."""

from __future__ import annotations

import pytest
from starlette.types import Message, Receive, Scope

from app.core.body_cap import capped_receive
from app.core.errors import BodyTooLarge

LIMIT = 10


def scope(content_length: int | None = None) -> Scope:
    headers = [] if content_length is None else [(b"content-length", str(content_length).encode())]
    return {"type": "http", "method": "POST", "headers": headers}


def sender(*chunks: bytes) -> Receive:
    """An ASGI receive that gives `chunks` in turn, then a disconnect."""
    messages: list[Message] = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks)
    ]
    messages.append({"type": "http.disconnect"})

    async def receive() -> Message:
        return messages.pop(0)

    return receive


async def read_all(receive: Receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        chunk: bytes = message.get("body", b"")
        body += chunk
        if message["type"] != "http.request" or not message.get("more_body"):
            return body


@pytest.mark.parametrize("size", [0, LIMIT - 1, LIMIT])
async def test_a_declared_body_up_to_the_cap_is_read_whole(size: int) -> None:
    receive = capped_receive(scope(size), sender(b"x" * size), LIMIT)
    assert await read_all(receive) == b"x" * size


async def test_a_body_declared_over_the_cap_is_refused_before_a_read() -> None:
    reads = 0

    async def receive() -> Message:
        nonlocal reads
        reads += 1
        return {"type": "http.request", "body": b"", "more_body": False}

    with pytest.raises(BodyTooLarge) as refused:
        capped_receive(scope(LIMIT + 1), receive, LIMIT)
    assert reads == 0
    assert refused.value.status_code == 413


@pytest.mark.parametrize("chunks", [(b"x" * 4, b"x" * 5), (b"x" * 4, b"x" * 6), (b"",)])
async def test_chunks_without_a_length_up_to_the_cap_are_read_whole(
    chunks: tuple[bytes, ...],
) -> None:
    receive = capped_receive(scope(), sender(*chunks), LIMIT)
    assert await read_all(receive) == b"".join(chunks)


async def test_chunks_are_refused_as_soon_as_they_pass_the_cap() -> None:
    receive = capped_receive(scope(), sender(b"x" * 6, b"x" * 5, b"x" * 100), LIMIT)
    assert (await receive())["body"] == b"x" * 6
    with pytest.raises(BodyTooLarge):
        await receive()


async def test_a_length_declaring_less_than_is_sent_does_not_lift_the_cap() -> None:
    receive = capped_receive(scope(LIMIT), sender(b"x" * LIMIT, b"x"), LIMIT)
    assert (await receive())["body"] == b"x" * LIMIT
    with pytest.raises(BodyTooLarge):
        await receive()
