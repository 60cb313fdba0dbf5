"""The Files API client: a streamed multipart body of exact length, the documented answer read
tolerantly, and errors mapped as the task API's (refused for good, or transient)."""

from __future__ import annotations

import logging
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
import respx
from python_multipart.multipart import MultipartParser, parse_options_header

from app.provider.files import (
    UPLOAD_PATH,
    MultipartBody,
    ProviderFile,
    ProviderFilesClient,
    ShortStream,
)
from app.provider.types import ProviderRejected, ProviderUnavailable

FILES_URL = "https://files-api.evolink.test"
API_KEY = "sk-evo-files-test"
DATA = bytes(range(256)) * 40 + b"\r\n--not-a-boundary\r\n"  # binary, with CRLFs inside
MIB = 1024 * 1024


def documented_answer(**data: Any) -> dict[str, Any]:
    """The success answer of the provider's document, with `data` overrides."""
    body = {
        "file_id": "file_abc123",
        "file_name": "photo.png",
        "original_name": "photo.png",
        "file_size": 2048,
        "mime_type": "image/png",
        "upload_path": "photos",
        "file_url": "https://files.evolink.ai/photos/photo.png",
        "download_url": "https://files.evolink.ai/api/v1/files/download/file_abc123",
        "upload_time": "2025-10-09T00:00:00+08:00",
        "expires_at": "2025-10-12T00:00:00+08:00",
    } | data
    return {"success": True, "code": 200, "msg": "File uploaded successfully", "data": body}


async def chunks_of(data: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def parts_of(body: bytes, content_type: str) -> dict[str, tuple[dict[str, str], bytes]]:
    """name -> (headers, data) of each part of a multipart/form-data body."""
    _, options = parse_options_header(content_type)
    parts: dict[str, tuple[dict[str, str], bytes]] = {}
    headers: dict[str, str] = {}
    data = bytearray()
    field = b""

    def on_part_begin() -> None:
        headers.clear()
        data.clear()

    def on_header_field(chunk: bytes, start: int, end: int) -> None:
        nonlocal field
        field = chunk[start:end]

    def on_header_value(chunk: bytes, start: int, end: int) -> None:
        headers[field.decode().lower()] = chunk[start:end].decode()

    def on_part_data(chunk: bytes, start: int, end: int) -> None:
        data.extend(chunk[start:end])

    def on_part_end() -> None:
        _, disposition = parse_options_header(headers["content-disposition"])
        parts[disposition[b"name"].decode()] = (dict(headers), bytes(data))

    parser = MultipartParser(
        options[b"boundary"],
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    parser.write(body)
    parser.finalize()
    return parts


@pytest.fixture
def files_api() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=FILES_URL, assert_all_called=False) as router:
        yield router


@pytest.fixture
async def client() -> AsyncIterator[ProviderFilesClient]:
    async with httpx.AsyncClient() as http:
        yield ProviderFilesClient(http, FILES_URL, API_KEY)


async def upload(client: ProviderFilesClient, data: bytes = DATA) -> ProviderFile:
    return await client.upload(
        chunks_of(data), size=len(data), content_type="image/png", file_name="t-1.png"
    )


async def test_the_documented_answer_gives_the_file(
    files_api: respx.MockRouter, client: ProviderFilesClient
) -> None:
    files_api.post(UPLOAD_PATH).respond(200, json=documented_answer())

    uploaded = await upload(client)

    assert uploaded == ProviderFile(
        id="file_abc123",
        url="https://files.evolink.ai/photos/photo.png",
        expires_at=datetime(2025, 10, 12, tzinfo=timezone(timedelta(hours=8))),
    )


async def test_the_request_is_one_multipart_body_of_exact_length(
    files_api: respx.MockRouter, client: ProviderFilesClient
) -> None:
    route = files_api.post(UPLOAD_PATH).respond(200, json=documented_answer())

    await upload(client)

    request = route.calls.last.request
    body = request.content
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert request.headers["content-length"] == str(len(body))
    assert "transfer-encoding" not in request.headers
    assert request.headers["content-type"].startswith("multipart/form-data; boundary=")
    parts = parts_of(body, request.headers["content-type"])
    assert set(parts) == {"file", "file_name"}
    headers, data = parts["file"]
    assert data == DATA
    assert headers["content-type"] == "image/png"
    assert headers["content-disposition"] == 'form-data; name="file"; filename="t-1.png"'
    assert parts["file_name"][1] == b"t-1.png"
    assert b"base64" not in body


async def test_the_body_is_made_chunk_by_chunk_as_the_source_yields() -> None:
    framing = MultipartBody.around(file_name="a.png", content_type="image/png", file_size=9)
    requested: list[str] = []

    async def source() -> AsyncIterator[bytes]:
        for chunk in (b"abc", b"def", b"ghi"):
            requested.append(chunk.decode())
            yield chunk

    produced: list[bytes] = []
    async for piece in framing.stream(source()):
        produced.append(piece)
        requested.append(f"sent {len(produced)}")

    assert produced == [framing.head, b"abc", b"def", b"ghi", framing.tail]
    # The head goes out before the source is read; each chunk goes out before the next is read.
    assert requested == ["sent 1", "abc", "sent 2", "def", "sent 3", "ghi", "sent 4", "sent 5"]
    assert framing.length == sum(map(len, produced))


@pytest.mark.parametrize(("size", "announced"), [(8, 9), (10, 9)])
async def test_a_stream_of_another_size_than_announced_fails(size: int, announced: int) -> None:
    framing = MultipartBody.around(file_name="a.png", content_type="image/png", file_size=announced)

    with pytest.raises(ShortStream):
        async for _ in framing.stream(chunks_of(b"x" * size, 3)):
            pass


class StreamReader(httpx.AsyncBaseTransport):
    """A transport that reads the request's stream the way a socket would, chunk by chunk."""

    def __init__(self) -> None:
        self.received = 0
        self.largest = 0
        self.chunks = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        async for chunk in request.stream:
            self.received += len(chunk)
            self.largest = max(self.largest, len(chunk))
            self.chunks += 1
        return httpx.Response(200, json=documented_answer())


async def test_a_large_file_goes_up_without_being_held_in_memory() -> None:
    size = 64 * MIB
    piece = b"\x89" * MIB

    async def source() -> AsyncIterator[bytes]:
        for _ in range(size // MIB):
            yield piece

    transport = StreamReader()
    async with httpx.AsyncClient(transport=transport) as http:
        client = ProviderFilesClient(http, FILES_URL, API_KEY)
        tracemalloc.start()
        try:
            await client.upload(source(), size=size, content_type="image/png", file_name="b.png")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()

    framing = MultipartBody.around(file_name="b.png", content_type="image/png", file_size=size)
    assert transport.received == framing.length
    assert transport.chunks == size // MIB + 2
    assert transport.largest == MIB
    assert peak < 8 * MIB


@pytest.mark.parametrize("status", [400, 401, 402, 403, 404, 413, 415])
@pytest.mark.parametrize(
    "shape",
    [
        pytest.param(lambda s: {"error": {"code": "quota_exhausted", "message": "no"}}, id="error"),
        pytest.param(lambda s: {"success": False, "code": s, "msg": "no"}, id="success-false"),
    ],
)
async def test_refusals_for_good(
    files_api: respx.MockRouter, client: ProviderFilesClient, status: int, shape: Any
) -> None:
    files_api.post(UPLOAD_PATH).respond(status, json=shape(status))

    with pytest.raises(ProviderRejected) as caught:
        await upload(client)

    assert caught.value.status_code == status
    assert caught.value.message == "no"
    assert caught.value.code in ("quota_exhausted", "")


@pytest.mark.parametrize("code", [400, 401, 402, 403, 413])
async def test_a_200_saying_success_false_is_a_refusal_of_its_code(
    files_api: respx.MockRouter, client: ProviderFilesClient, code: int
) -> None:
    files_api.post(UPLOAD_PATH).respond(
        200, json={"success": False, "code": code, "msg": "file quota exhausted"}
    )

    with pytest.raises(ProviderRejected) as caught:
        await upload(client)

    assert (caught.value.status_code, caught.value.message) == (code, "file quota exhausted")


async def test_a_200_saying_success_false_without_a_status_is_a_refusal(
    files_api: respx.MockRouter, client: ProviderFilesClient
) -> None:
    files_api.post(UPLOAD_PATH).respond(
        200, json={"success": False, "code": "QUOTA", "msg": "quota exhausted"}
    )

    with pytest.raises(ProviderRejected) as caught:
        await upload(client)

    assert (caught.value.status_code, caught.value.code) == (None, "QUOTA")


@pytest.mark.parametrize("code", [429, 500, 503])
async def test_a_200_saying_success_false_with_a_transient_code_is_transient(
    files_api: respx.MockRouter, client: ProviderFilesClient, code: int
) -> None:
    files_api.post(UPLOAD_PATH).respond(200, json={"success": False, "code": code, "msg": "busy"})

    with pytest.raises(ProviderUnavailable):
        await upload(client)


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
async def test_transient_answers(
    files_api: respx.MockRouter, client: ProviderFilesClient, status: int
) -> None:
    files_api.post(UPLOAD_PATH).respond(
        status,
        json={"success": False, "code": status, "msg": "later"},
        headers={"Retry-After": "30"},
    )

    with pytest.raises(ProviderUnavailable) as caught:
        await upload(client)

    assert (caught.value.status_code, caught.value.retry_after) == (status, 30.0)
    assert caught.value.message == "later"


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ConnectError,
        httpx.ConnectTimeout,
        httpx.ReadTimeout,
        httpx.WriteTimeout,
        httpx.ReadError,
        httpx.RemoteProtocolError,
    ],
)
async def test_transport_failures_are_transient(
    files_api: respx.MockRouter, client: ProviderFilesClient, failure: type[Exception]
) -> None:
    files_api.post(UPLOAD_PATH).mock(side_effect=failure("boom"))

    with pytest.raises(ProviderUnavailable) as caught:
        await upload(client)

    assert caught.value.status_code is None
    assert API_KEY not in caught.value.message


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(None, id="not-json"),
        pytest.param([1, 2], id="a-list"),
        pytest.param({"success": True}, id="no-data"),
        pytest.param({"data": {"file_url": "https://f.example/x.png"}}, id="no-id"),
        pytest.param({"data": {"file_id": "f1"}}, id="no-url"),
        pytest.param({"data": {"file_id": "f1", "file_url": "ftp://f/x.png"}}, id="ftp"),
        pytest.param({"data": {"file_id": "f1", "file_url": "https://f/x y.png"}}, id="space"),
        pytest.param({"data": {"file_id": "f1", "file_url": "https://"}}, id="no-host"),
        pytest.param({"data": {"file_id": 7, "file_url": "https://f/x.png"}}, id="id-int"),
        pytest.param({"data": {"file_id": "f1", "file_url": "https://f/" + "x" * 3000}}, id="long"),
    ],
)
async def test_an_answer_without_a_usable_file_is_transient(
    files_api: respx.MockRouter, client: ProviderFilesClient, body: Any
) -> None:
    if body is None:
        files_api.post(UPLOAD_PATH).respond(200, text="<html>ok</html>")
    else:
        files_api.post(UPLOAD_PATH).respond(200, json=body)

    with pytest.raises(ProviderUnavailable):
        await upload(client)


@pytest.mark.parametrize(
    ("expires_at", "expected"),
    [
        ("2025-10-12T00:00:00Z", datetime(2025, 10, 12, tzinfo=UTC)),
        ("2025-10-12T00:00:00", None),  # no zone: unknown
        ("soon", None),
        (1760227200, None),
        (None, None),
    ],
)
async def test_unknown_fields_are_ignored_and_expiry_read_when_it_can_be(
    files_api: respx.MockRouter, client: ProviderFilesClient, expires_at: Any, expected: Any
) -> None:
    body = documented_answer(expires_at=expires_at, extra={"nested": [1]})
    body["surprise"] = True
    files_api.post(UPLOAD_PATH).respond(201, json=body)

    uploaded = await upload(client)

    assert (uploaded.id, uploaded.expires_at) == ("file_abc123", expected)


async def test_a_refused_key_is_logged_for_the_operator_without_the_key(
    files_api: respx.MockRouter, client: ProviderFilesClient, caplog: pytest.LogCaptureFixture
) -> None:
    files_api.post(UPLOAD_PATH).respond(401, json={"error": {"code": "unauthorized"}})

    with caplog.at_level(logging.INFO), pytest.raises(ProviderRejected):
        await upload(client)

    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [(r.name, r.__dict__["http_status"]) for r in errors] == [("app.provider.calls", 401)]
    assert API_KEY not in caplog.text


async def test_an_error_of_the_source_stream_propagates_as_it_is(
    files_api: respx.MockRouter, client: ProviderFilesClient
) -> None:
    files_api.post(UPLOAD_PATH).respond(200, json=documented_answer())

    class StoreBroke(Exception):
        pass

    async def broken() -> AsyncIterator[bytes]:
        yield b"abc"
        raise StoreBroke

    with pytest.raises(StoreBroke):
        await client.upload(broken(), size=6, content_type="image/png", file_name="a.png")


@pytest.mark.parametrize(
    ("file_name", "content_type"),
    [
        ('a".png', "image/png"),
        ("a\r\nX: y.png", "image/png"),
        ("../a.png", "image/png"),
        ("", "image/png"),
        ("a.png", "image/png\r\nX: y"),
        ("a.png", "text/html"),
    ],
)
def test_unsafe_names_and_types_never_reach_the_headers(file_name: str, content_type: str) -> None:
    with pytest.raises(ValueError, match="unsafe"):
        MultipartBody.around(file_name=file_name, content_type=content_type, file_size=1)
