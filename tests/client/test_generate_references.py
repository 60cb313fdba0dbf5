"""`generate --image` against a scripted gateway: files uploaded (streamed, one Idempotency-Key per
content), references sent in order, the service's refusals shown, exit codes."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.client.command import LARGE_UPLOAD_BYTES
from app.client.options import ExitCode
from app.client.progress import format_bytes
from app.client.references import Reference, inspect_file, resolve_images
from app.client.upload import CHUNK_BYTES, FileChanged, file_chunks
from tests.client.fakes import PNG, Answer, FakeGateway, run_client, succeeded

OTHER_TASK = "7c1e2d3f-4a5b-4c6d-8e9f-0a1b2c3d4e5f"
JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 40


def sent(request: httpx.Request) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(request.read())
    return body


def sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


@pytest.fixture
def photos(tmp_path: Path) -> tuple[Path, Path]:
    first, second = tmp_path / "first.png", tmp_path / "second.jpg"
    first.write_bytes(PNG)
    second.write_bytes(JPEG)
    return first, second


def test_files_are_uploaded_first_and_every_reference_is_sent_in_order(
    tmp_path: Path, photos: tuple[Path, Path]
) -> None:
    first, second = photos
    fake = FakeGateway([succeeded()])

    result = run_client(
        fake,
        tmp_path / "x.png",
        "--image",
        str(first),
        "--image",
        f"task:{OTHER_TASK}",
        "--image-url",
        "https://example.com/c.png",
        "--image",
        str(second),
        "--image",
        f"task:{OTHER_TASK}:0",
    )

    assert result.code == ExitCode.OK, result.stderr
    paths = [request.url.path for request in fake.requests if request.method == "POST"]
    assert paths == ["/v1/uploads", "/v1/uploads", "/v1/images/generations"]
    up_first, up_second = fake.upload_posts()
    for request, content, content_type in [
        (up_first, PNG, "image/png"),
        (up_second, JPEG, "image/jpeg"),
    ]:
        assert request.read() == content
        assert request.headers["content-type"] == content_type
        assert request.headers["content-length"] == str(len(content))
        assert "transfer-encoding" not in request.headers
        assert request.headers["idempotency-key"] == f"cli-upload-sha256-{sha(content)}"
        assert request.headers["authorization"].startswith("Bearer ")
    ids = [upload["id"] for upload in fake.uploads.values()]
    [create] = fake.posts()
    assert sent(create) == {
        "prompt": "a heron",
        "image_urls": ["https://example.com/c.png"],
        "reference_images": [
            {"upload_id": ids[0]},
            {"task_id": OTHER_TASK, "index": 0},
            {"upload_id": ids[1]},
            {"task_id": OTHER_TASK, "index": 0},
        ],
    }
    assert f"uploaded {first} as {ids[0]} ({len(PNG) / 1024:.1f} KiB, image/png)" in result.stderr
    assert f"uploaded {second} as {ids[1]}" in result.stderr
    assert "uploading" not in result.stderr  # small files get no bar


def test_the_same_content_twice_is_uploaded_once(tmp_path: Path, photos: tuple[Path, Path]) -> None:
    first, _ = photos
    copy = tmp_path / "copy.png"
    copy.write_bytes(PNG)
    fake = FakeGateway([succeeded()])

    result = run_client(fake, tmp_path / "x.png", "--image", str(first), "--image", str(copy))

    assert result.code == ExitCode.OK, result.stderr
    assert len(fake.upload_posts()) == 1
    [upload] = fake.uploads.values()
    assert sent(fake.posts()[0])["reference_images"] == [{"upload_id": upload["id"]}] * 2


def test_a_rerun_gets_the_same_upload_back(tmp_path: Path, photos: tuple[Path, Path]) -> None:
    first, _ = photos
    fake = FakeGateway([succeeded()])

    one = run_client(fake, tmp_path / "1.png", "--image", str(first))
    two = run_client(fake, tmp_path / "2.png", "--image", str(first))

    assert (one.code, two.code) == (ExitCode.OK, ExitCode.OK)
    first_create, second_create = fake.posts()
    assert sent(first_create)["reference_images"] == sent(second_create)["reference_images"]
    assert len(fake.uploads) == 1
    assert f"already uploaded {first} as " in two.stderr


def test_an_upload_whose_answer_was_lost_is_repeated_with_the_same_key(
    tmp_path: Path, photos: tuple[Path, Path]
) -> None:
    first, _ = photos
    lost: list[Answer] = [httpx.ReadTimeout("lost"), httpx.Response(503, json={})]
    fake = FakeGateway([succeeded()], upload_answers=lost)

    result = run_client(fake, tmp_path / "x.png", "--image", str(first))

    assert result.code == ExitCode.OK, result.stderr
    posts = fake.upload_posts()
    assert len(posts) == 3
    assert {request.headers["idempotency-key"] for request in posts} == {
        f"cli-upload-sha256-{sha(PNG)}"
    }
    assert all(request.read() == PNG for request in posts)  # the file is read again each time


def test_an_expired_upload_of_the_key_is_uploaded_again_under_a_key_of_its_own(
    tmp_path: Path, photos: tuple[Path, Path]
) -> None:
    first, _ = photos
    message = "the upload this Idempotency-Key made has expired; upload again with a new key"
    expired = httpx.Response(409, json={"error": {"code": "upload_expired", "message": message}})
    fake = FakeGateway([succeeded()], upload_answers=[expired, httpx.ReadTimeout("lost")])

    result = run_client(fake, tmp_path / "x.png", "--image", str(first))

    assert result.code == ExitCode.OK, result.stderr
    keys = [request.headers["idempotency-key"] for request in fake.upload_posts()]
    base = f"cli-upload-sha256-{sha(PNG)}"
    assert keys[0] == base
    assert keys[1].startswith(f"{base}-")
    assert keys[2] == keys[1]  # the new key is kept for its own retries
    assert f"uploaded {first} as " in result.stderr


def test_an_upload_in_progress_under_the_same_key_is_waited_for(
    tmp_path: Path, photos: tuple[Path, Path]
) -> None:
    first, _ = photos
    busy = httpx.Response(
        409,
        json={"error": {"code": "conflict", "message": "a request with this key is in progress"}},
    )
    fake = FakeGateway([succeeded()], upload_answers=[busy])

    result = run_client(fake, tmp_path / "x.png", "--image", str(first))

    assert result.code == ExitCode.OK, result.stderr
    assert len({request.headers["idempotency-key"] for request in fake.upload_posts()}) == 1
    assert len(fake.upload_posts()) == 2


def test_another_conflict_exits_3_with_the_service_message(
    tmp_path: Path, photos: tuple[Path, Path]
) -> None:
    first, _ = photos
    expired = httpx.Response(409, json={"error": {"code": "upload_expired", "message": "gone"}})
    fake = FakeGateway([succeeded()], upload_answers=[expired, expired])

    result = run_client(fake, tmp_path / "x.png", "--image", str(first))

    assert result.code == ExitCode.SERVICE
    assert f"uploading {first}: the service answered HTTP 409 upload_expired: gone" in result.stderr
    assert len(fake.upload_posts()) == 2


@pytest.mark.parametrize(
    ("status", "code", "message"),
    [
        (413, "payload_too_large", "the upload is over 52428800 bytes"),
        (415, "unsupported_media_type", "not a PNG, JPEG or WebP image"),
        (422, "invalid_image", "the image header cannot be read"),
    ],
)
def test_a_refused_upload_exits_2_with_the_service_message_and_submits_nothing(
    tmp_path: Path, photos: tuple[Path, Path], status: int, code: str, message: str
) -> None:
    first, _ = photos
    answer = httpx.Response(status, json={"error": {"code": code, "message": message}})
    fake = FakeGateway([succeeded()], upload_answers=[answer])

    result = run_client(fake, tmp_path / "x.png", "--image", str(first))

    assert result.code == ExitCode.USAGE
    assert result.stderr.strip() == f"the service refused {first} (HTTP {status} {code}: {message})"
    assert fake.posts() == []
    assert len(fake.upload_posts()) == 1


def test_a_refused_reference_at_create_exits_2_with_the_service_message(
    tmp_path: Path,
) -> None:
    message = "reference_images[0]: no succeeded task of yours with this id"
    answer = httpx.Response(422, json={"error": {"code": "validation_error", "message": message}})
    fake = FakeGateway([succeeded()], create_answers=[answer])

    result = run_client(fake, tmp_path / "x.png", "--image", f"task:{OTHER_TASK}")

    assert result.code == ExitCode.USAGE
    assert result.stderr.strip() == (
        f"the service refused the request (HTTP 422 validation_error: {message})"
    )


def test_uploads_to_an_unreachable_service_exit_3_naming_the_file(
    tmp_path: Path, photos: tuple[Path, Path]
) -> None:
    first, _ = photos
    refused: list[Answer] = [httpx.ConnectError("Connection refused") for _ in range(3)]
    fake = FakeGateway([succeeded()], upload_answers=refused)

    result = run_client(fake, tmp_path / "x.png", "--image", str(first))

    assert result.code == ExitCode.SERVICE
    assert f"uploading {first}: cannot reach the service at http://gateway.test" in result.stderr
    assert fake.posts() == []


def test_an_unexpected_upload_answer_exits_3(tmp_path: Path, photos: tuple[Path, Path]) -> None:
    first, _ = photos
    fake = FakeGateway([succeeded()], upload_answers=[httpx.Response(201, json={"id": 1})])

    result = run_client(fake, tmp_path / "x.png", "--image", str(first))

    assert result.code == ExitCode.SERVICE
    assert "unexpected answer to POST /v1/uploads: not an upload object" in result.stderr


def test_other_bytes_recorded_by_the_service_exit_5(
    tmp_path: Path, photos: tuple[Path, Path]
) -> None:
    first, _ = photos
    wrong = {"id": "upl_x", "content_type": "image/png", "bytes": len(PNG), "sha256": "0" * 64}
    fake = FakeGateway([succeeded()], upload_answers=[httpx.Response(201, json=wrong)])

    result = run_client(fake, tmp_path / "x.png", "--image", str(first))

    assert result.code == ExitCode.CHECKSUM
    assert f"the service recorded {len(PNG)} bytes with sha256 {'0' * 64}" in result.stderr
    assert f"but the file has {len(PNG)} bytes with sha256 {sha(PNG)}" in result.stderr
    assert fake.posts() == []


def test_a_large_file_shows_its_upload_progress(tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    content = PNG + b"\0" * (3 * LARGE_UPLOAD_BYTES)
    big.write_bytes(content)
    fake = FakeGateway([succeeded()])

    result = run_client(fake, tmp_path / "x.png", "--image", str(big))

    assert result.code == ExitCode.OK, result.stderr
    shown = [line for line in result.stderr.splitlines() if line.startswith("uploading")]
    percents = [int(line.split("]")[1].split("%")[0]) for line in shown]
    assert percents[0] == 0
    assert percents[-1] == 100
    assert percents == sorted(percents)
    assert 4 <= len(percents) <= 11  # every 10% without a terminal, not every chunk
    total = format_bytes(len(content))
    assert shown[-1].endswith(f"{total} of {total}")
    assert fake.upload_posts()[0].read() == content


def test_on_a_terminal_the_upload_bar_is_redrawn_in_place(tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    big.write_bytes(PNG + b"\0" * (2 * LARGE_UPLOAD_BYTES))
    fake = FakeGateway([succeeded()])

    result = run_client(fake, tmp_path / "x.png", "--image", str(big), tty=True)

    assert result.code == ExitCode.OK
    assert "\ruploading  [" in result.stderr
    assert f"\nuploaded {big} as " not in result.stderr  # the message replaces the bar's line
    assert f"uploaded {big} as " in result.stderr


def test_ctrl_c_during_an_upload_says_nothing_was_submitted(
    tmp_path: Path, photos: tuple[Path, Path]
) -> None:
    first, _ = photos
    fake = FakeGateway([succeeded()], upload_answers=[KeyboardInterrupt()])

    result = run_client(fake, tmp_path / "x.png", "--image", str(first))

    assert result.code == ExitCode.INTERRUPTED
    assert result.stderr.strip() == f"interrupted while uploading {first}: nothing was submitted"
    assert fake.posts() == []


def _drain(chunks: Iterator[bytes]) -> bytes:
    return b"".join(chunks)


def test_file_chunks_stream_the_file_in_pieces_and_count_them(tmp_path: Path) -> None:
    path = tmp_path / "p.png"
    content = PNG + b"\1" * (2 * CHUNK_BYTES)
    path.write_bytes(content)
    counts: list[int] = []

    chunks = list(file_chunks(inspect_file(str(path)), counts.append))

    assert b"".join(chunks) == content
    assert len(chunks) == 3
    assert max(len(chunk) for chunk in chunks) == CHUNK_BYTES
    assert counts == [0, CHUNK_BYTES, 2 * CHUNK_BYTES, len(content)]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda path: path.write_bytes(PNG[:-1] + b"x"), "changed while it was uploaded"),
        (lambda path: path.write_bytes(PNG[:100]), "became shorter while it was uploaded"),
    ],
)
def test_a_file_changed_after_its_check_never_leaves_whole(
    tmp_path: Path, change: Callable[[Path], Any], message: str
) -> None:
    path = tmp_path / "p.png"
    path.write_bytes(PNG)
    image = inspect_file(str(path))
    change(path)

    with pytest.raises(FileChanged, match=message):
        _drain(file_chunks(image, lambda _: None))


def test_a_file_changed_after_its_check_exits_2_and_submits_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "p.png"
    path.write_bytes(PNG)

    def check_then_change(values: Sequence[str], url_count: int) -> tuple[Reference, ...]:
        found = resolve_images(values, url_count)
        path.write_bytes(PNG[:-1] + b"x")  # after the check, before the upload
        return found

    monkeypatch.setattr("app.client.options.resolve_images", check_then_change)
    fake = FakeGateway([succeeded()])

    result = run_client(fake, tmp_path / "x.png", "--image", str(path))

    assert result.code == ExitCode.USAGE
    assert result.stderr.strip() == f"{path} changed while it was uploaded; nothing was submitted"
    assert fake.uploads == {}
    assert fake.posts() == []
