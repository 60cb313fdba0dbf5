"""`--image` values checked before anything is sent: files, `task:ID[:N]`, the count (exit 2)."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from app.client.options import resolve_options
from app.client.references import (
    MAX_UPLOAD_BYTES,
    UNKNOWN_TYPE,
    BadImage,
    LocalImage,
    TaskImage,
    inspect_file,
    parse_task,
    resolve_images,
)
from tests.client.fakes import PNG, TASK_ID, FakeGateway, parse, run_client, succeeded

KEY_ENV = {"IMAGEGEN_GATEWAY_API_KEY": "env-key-0123456789"}
JPEG = b"\xff\xd8\xff\xe0" + b"\0" * 100
WEBP = b"RIFF\x10\0\0\0WEBPVP8 " + b"\0" * 40


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (f"task:{TASK_ID}", TaskImage(TASK_ID, 0)),
        (f"task:{TASK_ID}:0", TaskImage(TASK_ID, 0)),
        (f"task:{TASK_ID}:15", TaskImage(TASK_ID, 15)),
        (f"task:{TASK_ID.upper()}:3", TaskImage(TASK_ID, 3)),
    ],
)
def test_task_references_name_a_task_and_an_index(value: str, expected: TaskImage) -> None:
    assert parse_task(value) == expected
    assert expected.reference() == {"task_id": TASK_ID, "index": expected.index}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("task:", "not a task id"),
        ("task:123", "not a task id"),
        ("task:task-unified-abc", "not a task id"),
        (f"task:{TASK_ID}x", "not a task id"),
        (f"task:{TASK_ID}:-1", "a whole number from 0 to 15"),
        (f"task:{TASK_ID}:1.5", "a whole number from 0 to 15"),
        (f"task:{TASK_ID}:one", "a whole number from 0 to 15"),
        (f"task:{TASK_ID}:+1", "a whole number from 0 to 15"),
        (f"task:{TASK_ID}: 1", "a whole number from 0 to 15"),
        (f"task:{TASK_ID}:16", "a whole number from 0 to 15"),
        (f"task:{TASK_ID}:99999999999999999999", "a whole number from 0 to 15"),
        (f"task:{TASK_ID}:0:1", "a whole number from 0 to 15"),
    ],
)
def test_bad_task_references_are_refused(value: str, message: str) -> None:
    with pytest.raises(BadImage) as refused:
        parse_task(value)

    assert str(refused.value).startswith(f"--image {value}: ")
    assert message in str(refused.value)


@pytest.mark.parametrize(
    ("content", "content_type"),
    [(PNG, "image/png"), (JPEG, "image/jpeg"), (WEBP, "image/webp"), (b"hello", UNKNOWN_TYPE)],
)
def test_a_file_is_hashed_and_its_type_read_from_its_first_bytes(
    tmp_path: Path, content: bytes, content_type: str
) -> None:
    path = tmp_path / "photo.bin"
    path.write_bytes(content)

    image = inspect_file(str(path))

    assert image == LocalImage(
        path=path,
        size=len(content),
        sha256=hashlib.sha256(content).hexdigest(),
        content_type=content_type,
    )
    assert image.idempotency_key == f"cli-upload-sha256-{image.sha256}"


def test_a_file_of_exactly_the_limit_is_accepted_and_one_byte_more_refused(
    tmp_path: Path,
) -> None:
    at_limit, over = tmp_path / "at.png", tmp_path / "over.png"
    with at_limit.open("wb") as file:
        file.write(PNG)
        file.truncate(MAX_UPLOAD_BYTES)  # sparse: no 50 MiB written
    with over.open("wb") as file:
        file.write(PNG)
        file.truncate(MAX_UPLOAD_BYTES + 1)

    assert inspect_file(str(at_limit)).size == MAX_UPLOAD_BYTES
    with pytest.raises(
        BadImage, match=r"52428801 bytes is more than the 52428800 bytes \(50 MiB\)"
    ):
        inspect_file(str(over))


def test_missing_empty_directory_and_unreadable_files_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    locked = tmp_path / "locked.png"
    locked.write_bytes(PNG)
    opened = Path.open

    def open_unless_locked(path: Path, *args: Any, **kwargs: Any) -> Any:
        if path == locked:  # as chmod 0 would, even for root (who runs these tests in CI)
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return opened(path, *args, **kwargs)

    monkeypatch.setattr(Path, "open", open_unless_locked)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)

    cases = {
        str(tmp_path / "missing.png"): "no such file",
        "https://example.com/a.png": "no such file (for a URL use --image-url)",
        str(tmp_path): "is a directory",
        str(empty): "the file is empty",
        str(fifo): "not a regular file",
        "": "an empty value",
        str(locked): "cannot read it (Permission denied)",
    }
    for value, message in cases.items():
        with pytest.raises(BadImage) as refused:
            inspect_file(value)
        assert message in str(refused.value), value


def test_values_keep_their_order_and_tell_files_from_tasks(tmp_path: Path) -> None:
    first, second = tmp_path / "a.png", tmp_path / "b.png"
    first.write_bytes(PNG)
    second.write_bytes(JPEG)

    found = resolve_images([str(first), f"task:{TASK_ID}:0", str(second)], url_count=0)

    assert [type(item).__name__ for item in found] == ["LocalImage", "TaskImage", "LocalImage"]
    assert [getattr(item, "path", None) for item in found] == [first, None, second]


def test_a_file_named_like_a_task_is_reached_through_a_path(tmp_path: Path) -> None:
    odd = tmp_path / f"task:{TASK_ID}"
    odd.write_bytes(PNG)

    [image] = resolve_images([str(odd)], url_count=0)

    assert isinstance(image, LocalImage)


def test_more_than_16_references_in_all_are_refused_before_any_file_is_read(
    tmp_path: Path,
) -> None:
    values = [str(tmp_path / f"missing-{i}.png") for i in range(10)]

    with pytest.raises(BadImage, match=r"17 reference images \(7 --image-url, 10 --image\)"):
        resolve_images(values, url_count=7)
    assert len(resolve_images([f"task:{TASK_ID}"] * 10, url_count=6)) == 10


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--image", "missing.png"], "--image missing.png: no such file"),
        (["--image", "task:nope"], "--image task:nope: not a task id"),
        (["--image", f"task:{TASK_ID}:-2"], "a whole number from 0 to 15"),
        (["--image-url", "https://a/b.png"] * 8 + ["--image", f"task:{TASK_ID}"] * 9, "at most 16"),
    ],
)
def test_a_bad_image_exits_2_and_sends_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str], message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    fake = FakeGateway([succeeded()])

    result = run_client(fake, tmp_path / "x.png", *argv)

    assert result.code == 2
    assert result.stderr.startswith("imagegen-gateway generate: ")
    assert message in result.stderr
    assert result.stderr.count("\n") == 1  # one line
    assert fake.requests == []


def test_options_carry_the_checked_images(tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(PNG)
    args = parse("p", "-o", str(tmp_path / "x.png"), "--image", str(photo))

    options = resolve_options(args, KEY_ENV)

    [image] = options.images
    assert isinstance(image, LocalImage)
    assert image.sha256 == hashlib.sha256(PNG).hexdigest()
    assert options.body([{"upload_id": "upl_1"}]) == {
        "prompt": "p",
        "reference_images": [{"upload_id": "upl_1"}],
    }
