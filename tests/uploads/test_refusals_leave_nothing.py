"""Uploads refused after their bytes began to reach the store leave nothing there, on every
store: no key, no staging file of the file store, no unfinished S3 multipart upload, no row.

The bad-input suite (tests/bad_input/test_uploads.py) proves each refusal on the memory store;
these cases stream well past the store's first 5 MiB part, so the file store has begun its
staging file and S3 its multipart upload when the refusal comes."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.uploads.body import MAX_UPLOAD_BYTES
from tests.conftest import auth
from tests.support.s3 import BUCKET, S3Server
from tests.uploads.conftest import UPLOADS, UploadGateway, upload_gateway
from tests.uploads.images import png

MIB = 1024 * 1024
# A PNG whose one IDAT chunk claims 60 MiB: past the head checks, its bytes stream to the store.
LONG_PNG_HEAD = png()[:33] + struct.pack(">I", 60 * MIB) + b"IDAT"


async def over_the_cap() -> AsyncIterator[bytes]:
    """A chunked body (no Content-Length) that never ends before the cap."""
    yield LONG_PNG_HEAD
    sent = len(LONG_PNG_HEAD)
    while sent <= MAX_UPLOAD_BYTES + MIB:
        sent += MIB
        yield b"\0" * MIB


async def residue(
    uploads: UploadGateway, storage_url: str, request: pytest.FixtureRequest
) -> list[str]:
    """Everything the store holds, hidden parts included."""
    found = set(await uploads.keys())
    if storage_url.startswith("file://"):
        root = Path(storage_url.removeprefix("file://"))
        found |= {str(path.relative_to(root)) for path in root.rglob("*") if path.is_file()}
    if storage_url.startswith("s3://"):
        s3: S3Server = request.getfixturevalue("s3_server")
        prefix = storage_url.removeprefix(f"s3://{BUCKET}/")
        listed = s3.client.list_multipart_uploads(Bucket=BUCKET, Prefix=prefix)
        found |= {f"multipart upload {item['Key']}" for item in listed.get("Uploads", [])}
    return sorted(found)


async def test_a_refusal_after_megabytes_reached_the_store_leaves_nothing(
    database_url: str, storage_url: str, request: pytest.FixtureRequest
) -> None:
    truncated = LONG_PNG_HEAD + b"\0" * (20 * MIB)  # ends inside its IDAT: found at the end
    async with upload_gateway(database_url, storage_url) as uploads:
        chunked = await uploads.client.post(
            UPLOADS, content=over_the_cap(), headers=auth() | {"Content-Type": "image/png"}
        )
        broken = await uploads.upload(truncated, **{"Content-Type": "image/png"})
        left = await residue(uploads, storage_url, request)
        rows = await uploads.row_count()

    assert "content-length" not in chunked.request.headers
    assert (chunked.status_code, chunked.json()["error"]["code"]) == (413, "payload_too_large")
    assert (broken.status_code, broken.json()["error"]["code"]) == (422, "invalid_image")
    assert (left, rows) == ([], 0)
