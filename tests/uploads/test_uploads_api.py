"""POST, GET and DELETE /v1/uploads on every store and database: raw and multipart bodies,
what is stored and served back, idempotency sequential and concurrent, expiry and use."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import pytest

from app.core.clock import utcnow
from tests.conftest import BETA_KEY, auth
from tests.uploads.conftest import UPLOADS, UploadGateway, upload_gateway
from tests.uploads.images import jpeg, noise_png, png, webp

IMAGES = {
    "png": (png((64, 48)), "image/png", (64, 48)),
    "jpg": (jpeg((33, 17), progressive=True), "image/jpeg", (33, 17)),
    "webp": (webp((20, 30), lossless=True), "image/webp", (20, 30)),
}
FIELDS = {"id", "content_type", "bytes", "sha256", "width", "height", "created_at", "expires_at"}


def parsed(value: str) -> datetime:
    return datetime.fromisoformat(value)


@pytest.mark.parametrize("mode", ["raw", "multipart"])
async def test_each_format_is_stored_and_served_back(
    database_url: str, storage_url: str, mode: str
) -> None:
    async with upload_gateway(database_url, storage_url, upload_ttl_seconds=3600) as uploads:
        answers = {}
        for extension, (data, content_type, _size) in IMAGES.items():
            if mode == "raw":
                answers[extension] = await uploads.client.post(
                    UPLOADS, content=data, headers=auth() | {"Content-Type": content_type}
                )
            else:
                answers[extension] = await uploads.client.post(
                    UPLOADS,
                    files={"file": (f"holiday/photo.{extension}", data, "image/whatever")},
                    headers=auth(),
                )
        served = {}
        for extension, answer in answers.items():
            upload_id = answer.json()["id"]
            served[extension] = (
                await uploads.client.get(f"{UPLOADS}/{upload_id}", headers=auth()),
                await uploads.client.get(f"{UPLOADS}/{upload_id}/content", headers=auth()),
            )
        keys = await uploads.keys()
        rows = await uploads.rows()

    for extension, (data, content_type, (width, height)) in IMAGES.items():
        answer = answers[extension]
        body = answer.json()
        assert answer.status_code == 201, answer.text
        assert answer.headers["location"] == f"{UPLOADS}/{body['id']}"
        assert set(body) == FIELDS | {"file_name"}
        assert re.fullmatch(r"upl_[a-z2-7]{26}", body["id"])
        assert (body["content_type"], body["width"], body["height"]) == (
            content_type,
            width,
            height,
        )
        assert (body["bytes"], body["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
        created, expires = parsed(body["created_at"]), parsed(body["expires_at"])
        assert expires - created == timedelta(hours=1)
        assert body["file_name"] == (f"photo.{extension}" if mode == "multipart" else None)
        shown, content = served[extension]
        assert (shown.status_code, shown.json()) == (200, body)
        assert content.status_code == 200
        assert content.content == data
        assert content.headers["content-type"] == content_type
        assert content.headers["content-length"] == str(len(data))
        assert content.headers["etag"] == f'"{body["sha256"]}"'
        assert content.headers["x-content-type-options"] == "nosniff"
        assert content.headers["content-disposition"] == (
            f'attachment; filename="{body["id"]}.{extension}"'
        )
    assert sorted(keys) == sorted(f"uploads/{a.json()['id']}.{e}" for e, a in answers.items())
    assert sorted(row.key for row in rows) == keys


async def chunked(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    """`data` as a chunked request body (no Content-Length)."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def test_a_large_upload_streams_through_a_multipart_store_upload(
    database_url: str, storage_url: str
) -> None:
    data = noise_png(12 * 1024 * 1024)  # over the store's 5 MiB single put
    async with upload_gateway(database_url, storage_url) as uploads:
        answer = await uploads.client.post(
            UPLOADS, content=chunked(data), headers=auth() | {"Content-Type": "image/png"}
        )
        content = await uploads.client.get(f"{answer.headers['location']}/content", headers=auth())
        keys = await uploads.keys()

    assert answer.status_code == 201, answer.text
    assert answer.json()["sha256"] == hashlib.sha256(data).hexdigest()
    assert hashlib.sha256(content.content).hexdigest() == answer.json()["sha256"]
    assert keys == [f"uploads/{answer.json()['id']}.png"]


async def test_the_content_decides_the_type_whatever_is_declared(
    uploads: UploadGateway,
) -> None:
    data = jpeg()

    raw = await uploads.upload(data, **{"Content-Type": "image/png"})
    untyped = await uploads.client.post(UPLOADS, content=data, headers=auth())
    part = await uploads.client.post(
        UPLOADS, files={"file": ("x.png", data, "image/png")}, headers=auth()
    )

    assert [r.status_code for r in (raw, untyped, part)] == [201, 201, 201]
    assert {r.json()["content_type"] for r in (raw, untyped, part)} == {"image/jpeg"}
    assert sorted(await uploads.keys()) == sorted(
        f"uploads/{r.json()['id']}.jpg" for r in (raw, untyped, part)
    )


async def test_a_polyglot_inside_a_valid_image_is_stored_but_never_rendered(
    uploads: UploadGateway,
) -> None:
    """A JPEG whose comment segment holds an HTML page: a well-formed JPEG, so it is kept; it
    is served as image/jpeg, nosniff, as an attachment, sandboxed."""
    data = jpeg(comment=b"<html><script>alert(document.cookie)</script></html>")

    answer = await uploads.upload(data, **{"Content-Type": "text/html"})
    stored = await uploads.upload(data)
    content = await uploads.client.get(f"{stored.headers['location']}/content", headers=auth())

    assert answer.status_code == 415  # the declared type is refused before the body is read
    assert (stored.status_code, stored.json()["content_type"]) == (201, "image/jpeg")
    assert content.headers["content-type"] == "image/jpeg"
    assert content.headers["x-content-type-options"] == "nosniff"
    assert content.headers["content-disposition"].startswith("attachment;")
    assert "sandbox" in content.headers["content-security-policy"]


async def test_if_none_match_gets_a_304(uploads: UploadGateway) -> None:
    stored = await uploads.upload(png())
    path = f"{stored.headers['location']}/content"

    first = await uploads.client.get(path, headers=auth())
    conditional = auth() | {"If-None-Match": first.headers["etag"]}
    again = await uploads.client.get(path, headers=conditional)

    assert (again.status_code, again.content) == (304, b"")
    assert again.headers["etag"] == first.headers["etag"]


# --- idempotency ---------------------------------------------------------------------------


async def test_the_same_key_and_bytes_give_the_same_upload(uploads: UploadGateway) -> None:
    data = png()

    first = await uploads.upload(data, **{"Idempotency-Key": "k1"})
    again = await uploads.upload(data, **{"Idempotency-Key": "k1"})
    as_part = await uploads.client.post(
        UPLOADS, files={"file": ("a.png", data)}, headers=auth() | {"Idempotency-Key": "k1"}
    )
    other_caller = await uploads.upload(data, key=BETA_KEY, **{"Idempotency-Key": "k1"})

    assert first.status_code == 201
    assert (again.status_code, again.json()) == (200, first.json())
    assert again.headers["location"] == first.headers["location"]
    assert (as_part.status_code, as_part.json()) == (200, first.json())
    assert other_caller.status_code == 201
    assert other_caller.json()["id"] != first.json()["id"]
    assert await uploads.row_count() == 2
    assert len(await uploads.keys()) == 2


async def test_the_same_key_with_other_bytes_is_refused(uploads: UploadGateway) -> None:
    first = await uploads.upload(png(), **{"Idempotency-Key": "k1"})
    keys = await uploads.keys()

    other = await uploads.upload(jpeg(), **{"Idempotency-Key": "k1"})

    assert first.status_code == 201
    assert (other.status_code, other.json()["error"]["code"]) == (422, "idempotency_key_reused")
    assert await uploads.keys() == keys
    assert await uploads.row_count() == 1


async def test_a_key_whose_upload_expired_is_refused_until_swept(uploads: UploadGateway) -> None:
    first = await uploads.upload(png(), **{"Idempotency-Key": "k1"})
    await uploads.set_expiry(first.json()["id"], utcnow() - timedelta(seconds=1))

    again = await uploads.upload(png(), **{"Idempotency-Key": "k1"})

    assert (again.status_code, again.json()["error"]["code"]) == (409, "upload_expired")
    assert len(await uploads.keys()) == 1


async def test_a_deleted_uploads_key_is_free_again(uploads: UploadGateway) -> None:
    first = await uploads.upload(png(), **{"Idempotency-Key": "k1"})
    deleted = await uploads.client.delete(first.headers["location"], headers=auth())

    again = await uploads.upload(png(), **{"Idempotency-Key": "k1"})

    assert deleted.status_code == 204
    assert again.status_code == 201
    assert again.json()["id"] != first.json()["id"]
    assert await uploads.keys() == [f"uploads/{again.json()['id']}.png"]


async def test_concurrent_equal_requests_make_one_upload_and_one_object(
    database_url: str, storage_url: str
) -> None:
    data = noise_png(300_000)
    async with upload_gateway(database_url, storage_url) as uploads:
        answers = await asyncio.gather(
            *(uploads.upload(data, **{"Idempotency-Key": "same"}) for _ in range(8))
        )
        keys = await uploads.keys()
        rows = await uploads.rows()

    statuses = sorted(answer.status_code for answer in answers)
    assert statuses == [200] * 7 + [201], [a.text for a in answers]
    assert len({answer.json()["id"] for answer in answers}) == 1
    assert [row.id for row in rows] == [answers[0].json()["id"]]
    assert keys == [rows[0].key]  # the losers removed their copies


# --- reading and deleting --------------------------------------------------------------------


async def test_another_callers_upload_is_not_found(uploads: UploadGateway) -> None:
    mine = await uploads.upload(png())
    path = mine.headers["location"]

    answers = [
        await uploads.client.get(path, headers=auth(BETA_KEY)),
        await uploads.client.get(f"{path}/content", headers=auth(BETA_KEY)),
        await uploads.client.delete(path, headers=auth(BETA_KEY)),
    ]

    assert [(a.status_code, a.json()["error"]["code"]) for a in answers] == [(404, "not_found")] * 3
    assert (await uploads.client.get(path, headers=auth())).status_code == 200
    assert len(await uploads.keys()) == 1


async def test_an_expired_upload_is_gone_unless_an_unfinished_task_uses_it(
    uploads: UploadGateway,
) -> None:
    unused = await uploads.upload(png())
    used = await uploads.upload(jpeg())
    past = utcnow() - timedelta(seconds=1)
    await uploads.set_expiry(unused.json()["id"], past)
    await uploads.set_expiry(used.json()["id"], past)
    task = await uploads.task_using(used.json()["id"], status="processing")

    gone = await uploads.client.get(unused.headers["location"], headers=auth())
    gone_content = await uploads.client.get(f"{unused.headers['location']}/content", headers=auth())
    kept = await uploads.client.get(used.headers["location"], headers=auth())
    kept_content = await uploads.client.get(f"{used.headers['location']}/content", headers=auth())
    await uploads.task_using(used.json()["id"], status="succeeded")  # a second, finished task
    refused = await uploads.client.delete(used.headers["location"], headers=auth())

    assert (gone.status_code, gone_content.status_code) == (404, 404)
    assert (kept.status_code, kept_content.status_code) == (200, 200)
    assert kept_content.content == jpeg()
    assert (refused.status_code, refused.json()["error"]["code"]) == (409, "upload_in_use")
    assert task.id
    assert len(await uploads.keys()) == 2  # nothing deleted: expiry is the sweep's business


async def test_delete_removes_the_row_and_the_object(uploads: UploadGateway) -> None:
    stored = await uploads.upload(png())

    deleted = await uploads.client.delete(stored.headers["location"], headers=auth())
    again = await uploads.client.delete(stored.headers["location"], headers=auth())
    shown = await uploads.client.get(stored.headers["location"], headers=auth())

    assert (deleted.status_code, deleted.content) == (204, b"")
    assert (again.status_code, shown.status_code) == (404, 404)
    assert await uploads.row_count() == 0
    assert await uploads.keys() == []


@pytest.mark.parametrize("status", ["queued", "pending", "processing", "archiving"])
async def test_delete_is_refused_while_an_unfinished_task_uses_the_upload(
    uploads: UploadGateway, status: str
) -> None:
    stored = await uploads.upload(png())
    await uploads.task_using(stored.json()["id"], status=status)

    refused = await uploads.client.delete(stored.headers["location"], headers=auth())

    assert (refused.status_code, refused.json()["error"]["code"]) == (409, "upload_in_use")
    assert await uploads.row_count() == 1
    assert len(await uploads.keys()) == 1


@pytest.mark.parametrize("status", ["succeeded", "failed", "cancelled"])
async def test_delete_keeps_the_object_a_finished_tasks_reference_names(
    uploads: UploadGateway, status: str
) -> None:
    stored = await uploads.upload(png())
    await uploads.task_using(stored.json()["id"], status=status)

    deleted = await uploads.client.delete(stored.headers["location"], headers=auth())

    assert deleted.status_code == 204
    assert await uploads.row_count() == 0
    assert await uploads.keys() == [f"uploads/{stored.json()['id']}.png"]


async def test_an_upload_whose_object_is_gone_answers_503_and_the_log_names_the_upload(
    uploads: UploadGateway, caplog: pytest.LogCaptureFixture
) -> None:
    data = png((8, 8))
    stored = await uploads.client.post(
        UPLOADS, content=data, headers=auth() | {"Content-Type": "image/png"}
    )
    upload_id = stored.json()["id"]
    for key in await uploads.keys():
        await uploads.store.delete(key)
    with caplog.at_level(logging.ERROR, logger="app.archive.serving"):
        content = await uploads.client.get(f"{UPLOADS}/{upload_id}/content", headers=auth())
    assert content.status_code == 503
    lines = [record for record in caplog.records if record.name == "app.archive.serving"]
    assert [line.getMessage() for line in lines] == ["stored image missing from the store"]
    assert getattr(lines[0], "upload_id", None) == upload_id
    assert not hasattr(lines[0], "task_id")
