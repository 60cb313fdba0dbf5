"""`generate --image` as a real process against a real `serve` on the simulator: local files go
through `POST /v1/uploads`, earlier results are chained with `task:ID[:N]`, and the task object
lists every reference in order. Needs the uploads API and `reference_images` on create."""

from __future__ import annotations

import hashlib
import io
import os
import re
import uuid
from pathlib import Path

import pytest
from PIL import Image

from tests.client.service import Service, generate, task_id_in

pytestmark = pytest.mark.e2e

UPLOADED = re.compile(r"^(?:already )?uploaded (\S+) as (upl_\w+) ", re.MULTILINE)
SUBMITTED = re.compile(r"^task (\S+) submitted", re.MULTILINE)
URL = "https://example.com/reference.png"
PROGRESS = re.compile(r"^uploading +\[[#-]+\] +(\d+)%", re.MULTILINE)


def png(path: Path, size: tuple[int, int] = (64, 48), *, noise: bool = False) -> bytes:
    """A real PNG file at `path` (random pixels when `noise`, so that it does not compress)."""
    if noise:
        image = Image.frombytes("RGB", size, os.urandom(size[0] * size[1] * 3))
    else:
        image = Image.new("RGB", size, (200, 120, 40))
    out = io.BytesIO()
    image.save(out, "PNG")
    path.write_bytes(out.getvalue())
    return out.getvalue()


def sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def test_a_file_and_an_earlier_result_are_references_in_order(
    service: Service, tmp_path: Path
) -> None:
    first = generate(service, "a heron over a lake", "--out", str(tmp_path / "heron.png"))
    assert first.returncode == 0, first.stderr
    earlier = service.task(task_id_in(first.stdout))
    photo = tmp_path / "photo.png"
    content = png(photo)

    result = generate(
        service,
        "the heron in the style of the photo",
        "--image",
        str(photo),
        "--image",
        f"task:{earlier['id']}",
        "--out",
        str(tmp_path / "edit.png"),
    )

    assert result.returncode == 0, result.stderr
    [(shown_path, upload_id)] = UPLOADED.findall(result.stderr)
    assert shown_path == str(photo)
    task = service.task(task_id_in(result.stdout))
    assert task["status"] == "succeeded"
    upload_reference, task_reference = task["reference_images"]
    assert upload_reference == {
        "source": "upload",
        "upload_id": upload_id,
        "content_type": "image/png",
        "bytes": len(content),
        "sha256": sha(content),
    }
    [earlier_image] = earlier["images"]
    assert task_reference == {
        "source": "task",
        "task_id": earlier["id"],
        "index": 0,
        "content_type": earlier_image["content_type"],
        "bytes": earlier_image["bytes"],
        "sha256": earlier_image["sha256"],
    }
    upload = service.get(f"/v1/uploads/{upload_id}").json()
    assert (upload["sha256"], upload["bytes"], upload["width"], upload["height"]) == (
        sha(content),
        len(content),
        64,
        48,
    )
    assert service.get(f"/v1/uploads/{upload_id}/content").content == content


def test_urls_come_first_then_the_images_in_the_order_given(
    service: Service, tmp_path: Path
) -> None:
    first = generate(service, "an owl", "--out", str(tmp_path / "owl.png"))
    assert first.returncode == 0, first.stderr
    earlier = task_id_in(first.stdout)
    one, two = tmp_path / "one.png", tmp_path / "two.png"
    png(one, (32, 32))
    png(two, (40, 20))

    result = generate(
        service,
        "combine them",
        "--image",
        f"task:{earlier}:0",
        "--image",
        str(one),
        "--image-url",
        URL,
        "--image",
        str(two),
        "--out",
        str(tmp_path / "x.png"),
    )

    submitted = SUBMITTED.search(result.stderr)
    assert submitted is not None, result.stderr
    task = service.task(submitted.group(1))  # done or failed: the simulator may not reach URL
    uploads = dict(UPLOADED.findall(result.stderr))
    assert [
        (reference["source"], reference.get("task_id") or reference.get("upload_id") or "url")
        for reference in task["reference_images"]
    ] == [
        ("url", "url"),
        ("task", earlier),
        ("upload", uploads[str(one)]),
        ("upload", uploads[str(two)]),
    ]
    assert task["image_urls"] == [URL]


def test_a_rerun_after_a_lost_answer_reuses_the_upload(service: Service, tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    png(photo, (50, 50))

    runs = [
        generate(service, "a fox", "--image", str(photo), "--out", str(tmp_path / f"{n}.png"))
        for n in (1, 2)
    ]

    assert [run.returncode for run in runs] == [0, 0], [run.stderr for run in runs]
    ids = [UPLOADED.findall(run.stderr)[0][1] for run in runs]
    assert ids[0] == ids[1]
    assert f"already uploaded {photo} as {ids[0]}" in runs[1].stderr
    references = [service.task(task_id_in(run.stdout))["reference_images"] for run in runs]
    assert references[0] == references[1]


def test_a_large_file_streams_with_progress(service: Service, tmp_path: Path) -> None:
    photo = tmp_path / "large.png"
    content = png(photo, (1024, 1024), noise=True)  # about 3 MiB
    assert len(content) > 2 * 1024 * 1024

    result = generate(service, "a fox", "--image", str(photo), "--out", str(tmp_path / "x.png"))

    assert result.returncode == 0, result.stderr
    percents = [int(p) for p in PROGRESS.findall(result.stderr)]
    assert percents[0] == 0
    assert percents[-1] == 100
    [(_, upload_id)] = UPLOADED.findall(result.stderr)
    assert service.get(f"/v1/uploads/{upload_id}").json()["sha256"] == sha(content)


def test_a_file_the_service_refuses_exits_2_with_its_message(
    service: Service, tmp_path: Path
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image\n")
    before = service.task_ids()

    result = generate(service, "p", "--image", str(notes), "--out", str(tmp_path / "x.png"))

    assert result.returncode == 2
    assert f"the service refused {notes} (HTTP 415 unsupported_media_type: " in result.stderr
    assert service.task_ids() == before


def test_a_task_reference_the_service_refuses_exits_2_with_its_message(
    service: Service, tmp_path: Path
) -> None:
    unknown = str(uuid.uuid4())
    before = service.task_ids()

    result = generate(service, "p", "--image", f"task:{unknown}", "--out", str(tmp_path / "x.png"))

    assert result.returncode == 2
    assert "the service refused the request (HTTP 422 validation_error: " in result.stderr
    assert "reference_images[0]" in result.stderr
    assert service.task_ids() == before


def test_a_bad_image_is_refused_before_anything_is_sent(service: Service, tmp_path: Path) -> None:
    before = service.task_ids()

    result = generate(
        service, "p", "--image", str(tmp_path / "missing.png"), "--out", str(tmp_path / "x.png")
    )

    assert result.returncode == 2
    assert result.stderr == (
        f"imagegen-gateway generate: --image {tmp_path / 'missing.png'}: no such file\n"
    )
    assert service.task_ids() == before
