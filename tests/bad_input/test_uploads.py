"""Callers: bad uploads and bad upload ids. Each case answers its exact status and error code,
and changes nothing: every row of every table and every key of the store are the same before
and after, and an Idempotency-Key sent with a refused upload is still free."""

# ruff: noqa: E501 - the case table keeps one case a line

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from app.core.clock import utcnow
from app.main import create_app
from app.uploads.body import MAX_UPLOAD_BYTES, MULTIPART_ALLOWANCE
from app.uploads.models import Upload
from tests.bad_input.conftest import Seeded, error_of, settings
from tests.conftest import ALPHA_KEY, BETA_KEY, auth
from tests.support.gateway import Gateway
from tests.support.servers import serve_app
from tests.uploads.conftest import reference_row
from tests.uploads.images import jpeg, png, png_bomb, png_chunk, webp

UPLOADS = "/v1/uploads"
V, BAD, TYPE, BIG = (
    "validation_error",
    "invalid_image",
    "unsupported_media_type",
    "payload_too_large",
)
UPLOAD_KEY = "bad-input-upload-1"  # the Idempotency-Key of alpha's seeded upload
BOUNDARY = "b0undary-7d1"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
OCTETS = "application/octet-stream"


@dataclass
class WithUploads:
    """The seeded gateway with uploads: alpha's (live, expired, in use, deleted), beta's."""

    seeded: Seeded
    ids: dict[str, str]

    @property
    def client(self) -> httpx.AsyncClient:
        return self.seeded.client

    async def snapshot(self) -> tuple[dict[str, list[tuple[Any, ...]]], list[str]]:
        """Every row of every table, and every key of the store."""
        store = self.seeded.gateway.app.state.store
        return await self.seeded.snapshot(), await store.list_keys()

    async def key_still_works(self, key: str) -> None:
        """A key used only by refused uploads makes an upload."""
        answer = await self.client.post(
            UPLOADS, content=webp(), headers=auth() | {"Idempotency-Key": key}
        )
        assert answer.status_code == 201, answer.text


async def _upload(
    client: httpx.AsyncClient, data: bytes, key: str = ALPHA_KEY, **extra: str
) -> str:
    answer = await client.post(UPLOADS, content=data, headers=auth(key) | extra)
    assert answer.status_code == 201, answer.text
    upload_id: str = answer.json()["id"]
    return upload_id


@pytest.fixture
async def uploads(seeded: Seeded) -> WithUploads:
    client = seeded.client
    ids = {
        "mine": await _upload(client, png(), **{"Idempotency-Key": UPLOAD_KEY}),
        "theirs": await _upload(client, jpeg(), BETA_KEY),
        "expired": await _upload(client, webp()),
        "in use": await _upload(client, jpeg((5, 5))),
        "deleted": await _upload(client, png((3, 3))),
    }
    deleted = await client.delete(f"{UPLOADS}/{ids['deleted']}", headers=auth())
    assert deleted.status_code == 204
    async with seeded.gateway.sessions() as session:
        await session.execute(
            update(Upload)
            .where(Upload.id == ids["expired"])
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
        in_use = await session.get(Upload, ids["in use"])
        assert in_use is not None
        session.add(reference_row(seeded.mine["id"], in_use))  # alpha's queued task uses it
        await session.commit()
    return WithUploads(seeded, ids)


def part(name: str | None, data: bytes, filename: str | None = None) -> bytes:
    """One multipart part (None: without Content-Disposition)."""
    head = f"--{BOUNDARY}\r\n"
    if name is not None:
        head += f'Content-Disposition: form-data; name="{name}"'
        head += f'; filename="{filename}"' if filename else ""
        head += "\r\n"
    return (head + "Content-Type: image/png\r\n\r\n").encode() + data + b"\r\n"


def multipart(*parts: bytes) -> bytes:
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


TEXT = b"This is a text file, not an image. " * 10
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ZERO_WIDTH = PNG_SIGNATURE + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 0, 10, 8, 2, 0, 0, 0))
ZIP = b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + b"\0" * 40 + b"PK\x05\x06" + b"\0" * 18
WEBP = webp()
WEBP_LONGER_THAN_SAID = WEBP[:4] + struct.pack("<I", len(WEBP) - 8 - 2) + WEBP[8:]

# (case, Content-Type, body, status, code, a word of the message)
POSTS: list[tuple[str, str | None, bytes, int, str, str]] = [
    ("text named .png, multipart", MULTIPART, multipart(part("file", TEXT, "notes.png")), 415, TYPE, "JPEG, PNG or WebP"),
    ("text declared image/png", "image/png", TEXT, 415, TYPE, "JPEG, PNG or WebP"),
    ("GIF", "image/png", b"GIF89a\x01\x00\x01\x00\x80\x00\x00" + b"\0" * 20 + b";", 415, TYPE, "WebP"),
    ("HTML", OCTETS, b"<!doctype html><script>alert(1)</script>", 415, TYPE, "WebP"),
    ("ZIP", OCTETS, ZIP, 415, TYPE, "WebP"),
    ("SVG", "image/png", b'<svg xmlns="http://www.w3.org/2000/svg"><script/></svg>', 415, TYPE, "WebP"),
    ("PNG header then garbage", "image/png", PNG_SIGNATURE + bytes(range(256)) * 4, 422, BAD, "unreadable"),
    ("PNG IHDR then garbage", "image/png", png()[:33] + bytes(range(256)) * 4, 422, BAD, "PNG"),
    ("PNG signature alone", "image/png", PNG_SIGNATURE, 422, BAD, "ends inside its header"),
    ("PNG cut in half", "image/png", png()[: len(png()) // 2], 422, BAD, "truncated"),
    ("PNG of zero width", "image/png", ZERO_WIDTH + b"\0" * 40, 422, BAD, "zero dimension"),
    ("PNG bomb 20000x20000", "image/png", png_bomb(), 422, BAD, "400000000 pixels"),
    ("polyglot: PNG then ZIP", "image/png", png() + ZIP, 422, BAD, "follow the end"),
    ("polyglot: PNG header glued to a JPEG", "image/png", PNG_SIGNATURE + jpeg(), 422, BAD, "unreadable"),
    ("polyglot: JPEG then HTML", "image/jpeg", jpeg() + b"<html><script>1</script>", 422, BAD, "follow the end"),
    ("polyglot: WebP then ZIP", "image/webp", WEBP + ZIP, 422, BAD, "follow the end"),
    ("WebP shorter than its RIFF length", "image/webp", WEBP_LONGER_THAN_SAID, 422, BAD, "WebP"),
    ("JPEG without its end", "image/jpeg", jpeg()[:-2], 422, BAD, "truncated"),
    ("empty body", "image/png", b"", 422, "empty_body", "empty"),
    ("empty body, no Content-Type", None, b"", 422, "empty_body", "empty"),
    ("empty file part", MULTIPART, multipart(part("file", b"", "a.png")), 422, "empty_body", "empty"),
    ("multipart with another part only", MULTIPART, multipart(part("image", png())), 422, V, "unexpected part 'image'"),
    ("multipart without parts", MULTIPART, multipart(), 422, V, "no part named `file`"),
    ("multipart with two file parts", MULTIPART, multipart(part("file", png()), part("file", png())), 422, V, "twice"),
    ("multipart with a part after file", MULTIPART, multipart(part("file", png()), part("note", b"x")), 422, V, "unexpected part"),
    ("multipart with a part before file", MULTIPART, multipart(part("note", b"x"), part("file", png())), 422, V, "unexpected part"),
    ("multipart part without a name", MULTIPART, multipart(part(None, png())), 422, V, "Content-Disposition"),
    ("multipart without a closing boundary", MULTIPART, part("file", png()), 422, V, "closing boundary"),
    ("multipart not multipart", MULTIPART, png(), 422, V, "malformed"),
    ("multipart without a boundary", "multipart/form-data", multipart(part("file", png())), 422, V, "boundary"),
    ("multipart boundary of 71 characters", "multipart/form-data; boundary=" + "b" * 71, png(), 422, V, "boundary"),
    ("Content-Type text/plain", "text/plain", png(), 415, TYPE, "Content-Type"),
    ("Content-Type JSON", "application/json", png(), 415, TYPE, "Content-Type"),
    ("Content-Type form", "application/x-www-form-urlencoded", png(), 415, TYPE, "Content-Type"),
    ("Content-Type image/gif", "image/gif", png(), 415, TYPE, "Content-Type"),
]  # fmt: skip


def ids(table: list[tuple[Any, ...]]) -> list[str]:
    return [str(row[0]) for row in table]


@pytest.mark.parametrize(
    ("case", "content_type", "body", "status", "code", "names"), POSTS, ids=ids(POSTS)
)
async def test_a_bad_upload_is_refused_and_changes_nothing(
    uploads: WithUploads,
    case: str,
    content_type: str | None,
    body: bytes,
    status: int,
    code: str,
    names: str,
) -> None:
    before = await uploads.snapshot()
    key = f"bad-upload-{case.replace(' ', '-')}"
    headers = auth() | {"Idempotency-Key": key}
    if content_type is not None:
        headers["Content-Type"] = content_type

    response = await uploads.client.post(UPLOADS, content=body, headers=headers)

    assert response.status_code == status, response.text
    assert error_of(response)["code"] == code
    assert names in error_of(response)["message"]
    assert await uploads.snapshot() == before
    await uploads.key_still_works(key)


HEADERS: list[tuple[str, bytes]] = [
    ("idempotency key empty", b""),
    ("idempotency key 256 chars", b"k" * 256),
    ("idempotency key latin-1", b"caf\xe9"),
    ("idempotency key utf-8", "ключ".encode()),
    ("idempotency key tab", b"a\tb"),
]


@pytest.mark.parametrize(("case", "value"), HEADERS, ids=ids(HEADERS))
async def test_a_bad_idempotency_key_is_refused_and_changes_nothing(
    uploads: WithUploads, case: str, value: bytes
) -> None:
    before = await uploads.snapshot()
    headers = [(b"authorization", f"Bearer {ALPHA_KEY}".encode()), (b"idempotency-key", value)]

    response = await uploads.client.post(UPLOADS, content=png(), headers=headers)

    assert response.status_code == 422, case
    assert error_of(response)["code"] == V
    assert "Idempotency-Key" in error_of(response)["message"]
    assert await uploads.snapshot() == before


async def test_the_seeded_key_with_other_bytes_is_refused_and_changes_nothing(
    uploads: WithUploads,
) -> None:
    before = await uploads.snapshot()

    response = await uploads.client.post(
        UPLOADS, content=jpeg(), headers=auth() | {"Idempotency-Key": UPLOAD_KEY}
    )

    assert (response.status_code, error_of(response)["code"]) == (422, "idempotency_key_reused")
    assert await uploads.snapshot() == before


async def test_without_a_key_the_upload_is_not_read(uploads: WithUploads) -> None:
    before = await uploads.snapshot()
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(4):
            sent += 1
            yield png()

    response = await uploads.client.post(UPLOADS, content=body())

    assert (response.status_code, error_of(response)["code"]) == (401, "unauthorized")
    assert sent == 0
    assert await uploads.snapshot() == before


# --- over the cap ----------------------------------------------------------------------------


async def test_a_declared_length_over_the_cap_is_refused_unread(uploads: WithUploads) -> None:
    before = await uploads.snapshot()
    body = png() + b"\0" * (MAX_UPLOAD_BYTES + 1 - len(png()))

    raw = await uploads.client.post(UPLOADS, content=body, headers=auth())
    multipart_body = multipart(part("file", body[: MAX_UPLOAD_BYTES - 100]))
    multipart_body += b"\0" * (MAX_UPLOAD_BYTES + MULTIPART_ALLOWANCE + 1 - len(multipart_body))
    as_part = await uploads.client.post(
        UPLOADS, content=multipart_body, headers=auth() | {"Content-Type": MULTIPART}
    )

    assert int(raw.request.headers["content-length"]) == MAX_UPLOAD_BYTES + 1
    assert (raw.status_code, error_of(raw)["code"]) == (413, BIG)
    assert (as_part.status_code, error_of(as_part)["code"]) == (413, BIG)
    assert await uploads.snapshot() == before


MIB = 1024 * 1024
# A PNG whose one IDAT chunk claims 60 MiB: it streams past the head, then past the cap.
ENDLESS_PNG_HEAD = png()[:33] + struct.pack(">I", 60 * MIB) + b"IDAT"


class Endless:
    """A chunked body (no Content-Length): `head`, then 1 MiB pieces, counting what was taken."""

    def __init__(self, head: bytes, tail: bytes = b"") -> None:
        self.head, self.tail = head, tail
        self.taken = 0

    async def chunks(self) -> AsyncIterator[bytes]:
        self.taken += len(self.head)
        yield self.head
        while self.taken < 52 * MIB:
            self.taken += MIB
            yield b"\0" * MIB
        yield self.tail


async def test_a_chunked_body_is_cut_off_when_it_passes_the_cap(uploads: WithUploads) -> None:
    before = await uploads.snapshot()
    raw, in_part = Endless(ENDLESS_PNG_HEAD), Endless(part("file", ENDLESS_PNG_HEAD))

    answer = await uploads.client.post(UPLOADS, content=raw.chunks(), headers=auth())
    part_answer = await uploads.client.post(
        UPLOADS, content=in_part.chunks(), headers=auth() | {"Content-Type": MULTIPART}
    )

    assert "content-length" not in answer.request.headers
    assert (answer.status_code, error_of(answer)["code"]) == (413, BIG)
    assert (part_answer.status_code, error_of(part_answer)["code"]) == (413, BIG)
    assert raw.taken <= MAX_UPLOAD_BYTES + MIB  # not a piece more than the one over the cap
    assert in_part.taken <= MAX_UPLOAD_BYTES + MULTIPART_ALLOWANCE + MIB
    assert await uploads.snapshot() == before


async def test_a_chunked_body_over_the_cap_over_real_http(sqlite_database_url: str) -> None:
    """uvicorn reading a chunked request: the 413 arrives while the client is still sending,
    and nothing is stored."""
    app = create_app(settings(sqlite_database_url))
    async with serve_app(app) as url:
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            f"POST {UPLOADS} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {ALPHA_KEY}\r\n"
            "Content-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        )

        sent = 0

        async def send() -> None:
            nonlocal sent
            try:
                for piece in (ENDLESS_PNG_HEAD, *[b"\0" * MIB] * 100):
                    writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                    await writer.drain()
                    sent += len(piece)
            except ConnectionError:
                pass

        sending = asyncio.create_task(send())
        status_line = await asyncio.wait_for(reader.readline(), timeout=60)
        sent_when_answered = sent
        await sending
        writer.close()
        store = app.state.store
        keys = await store.list_keys()
        gateway = Gateway(app=app, client=httpx.AsyncClient())
        rows = await gateway.count(Upload)
        await gateway.client.aclose()

    assert status_line.split(b" ")[1] == b"413", status_line
    assert MAX_UPLOAD_BYTES < sent_when_answered < 100 * MIB  # answered while still sending
    assert (keys, rows) == ([], 0)


# --- ids ---------------------------------------------------------------------------------------

NOT_FOUND = [
    ("another caller's", "theirs"),
    ("expired", "expired"),
    ("deleted", "deleted"),
    ("unknown", "upl_" + "a" * 26),
    ("upper case", "UPPER"),
    ("not an upload id", "not-an-id"),
    ("too long", "upl_" + "a" * 2000),
    ("NUL", "%00"),
    ("traversal", "..%2F..%2Fetc%2Fpasswd"),
]


@pytest.mark.parametrize(("case", "which"), NOT_FOUND, ids=ids(NOT_FOUND))
async def test_an_upload_the_caller_cannot_see_is_404_and_changes_nothing(
    uploads: WithUploads, case: str, which: str
) -> None:
    upload_id = uploads.ids.get(which, which)
    if which == "UPPER":
        upload_id = uploads.ids["mine"].upper()
    before = await uploads.snapshot()
    path = f"{UPLOADS}/{upload_id}"

    answers = [
        await uploads.client.get(path, headers=auth()),
        await uploads.client.get(f"{path}/content", headers=auth()),
        await uploads.client.delete(path, headers=auth()),
    ]

    assert [(a.status_code, error_of(a)["code"]) for a in answers] == [(404, "not_found")] * 3
    assert await uploads.snapshot() == before


async def test_deleting_an_upload_an_unfinished_task_uses_is_409(uploads: WithUploads) -> None:
    before = await uploads.snapshot()

    response = await uploads.client.delete(f"{UPLOADS}/{uploads.ids['in use']}", headers=auth())

    assert (response.status_code, error_of(response)["code"]) == (409, "upload_in_use")
    assert await uploads.snapshot() == before


METHODS = [
    ("list uploads", "GET", UPLOADS),
    ("PUT an upload", "PUT", f"{UPLOADS}/{{mine}}"),
    ("POST to an upload", "POST", f"{UPLOADS}/{{mine}}"),
    ("DELETE the content", "DELETE", f"{UPLOADS}/{{mine}}/content"),
]


@pytest.mark.parametrize(("case", "method", "path"), METHODS, ids=ids(METHODS))
async def test_a_method_the_route_lacks_is_405(
    uploads: WithUploads, case: str, method: str, path: str
) -> None:
    before = await uploads.snapshot()

    response = await uploads.client.request(
        method, path.format(mine=uploads.ids["mine"]), headers=auth()
    )

    assert (response.status_code, error_of(response)["code"]) == (405, "method_not_allowed")
    assert await uploads.snapshot() == before


async def test_a_body_that_stalls_is_cut_off(
    uploads: WithUploads, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("app.uploads.body.IDLE_SECONDS", 0.2)
    before = await uploads.snapshot()
    never = asyncio.Event()

    async def stalling() -> AsyncIterator[bytes]:
        yield ENDLESS_PNG_HEAD
        await never.wait()  # the client sends nothing more
        yield b""

    response = await uploads.client.post(UPLOADS, content=stalling(), headers=auth())

    assert (response.status_code, error_of(response)["code"]) == (408, "request_timeout")
    assert await uploads.snapshot() == before
