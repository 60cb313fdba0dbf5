"""The request side of reference images: the fingerprint that decides replays, and how errors
name list items."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

from app.core.errors import describe_validation, field_path
from app.tasks.schemas import CreateTaskRequest

TASK = "c2b3abd6-71ea-4aaa-ae21-053d55a5bfed"


def test_a_request_without_references_keeps_the_hash_it_had_before_they_existed() -> None:
    # The normalised request as it was hashed before reference_images was a field: the replay of
    # a create made before the upgrade still matches its task.
    before = {
        "prompt": "a lighthouse",
        "model": "gpt-image-1.5",
        "size": "1024x1024",
        "quality": "high",
        "image_urls": ["https://e.com/a.png"],
        "n": 1,
        "metadata": {},
        "notify_url": None,
    }
    canonical = json.dumps(before, sort_keys=True, separators=(",", ":"))

    request = CreateTaskRequest(prompt="a lighthouse", image_urls=["https://e.com/a.png"])

    assert request.fingerprint() == hashlib.sha256(canonical.encode()).hexdigest()
    assert (
        request.fingerprint()
        == CreateTaskRequest.model_validate(
            {
                "prompt": "a lighthouse",
                "image_urls": ["https://e.com/a.png"],
                "reference_images": [],
            }
        ).fingerprint()
    )


def test_the_fingerprint_covers_each_reference_and_their_order() -> None:
    def fingerprint(*references: Mapping[str, object]) -> str:
        return CreateTaskRequest.model_validate(
            {"prompt": "p", "reference_images": list(references)}
        ).fingerprint()

    upload = {"upload_id": "upl_a"}
    task = {"task_id": TASK, "index": 0}
    prints = {
        fingerprint(),
        fingerprint(upload),
        fingerprint({"upload_id": "upl_b"}),
        fingerprint(task),
        fingerprint({"task_id": TASK, "index": 1}),
        fingerprint({"url": "https://e.com/a.png"}),
        fingerprint(upload, task),
        fingerprint(task, upload),
        fingerprint(upload, upload),
    }

    assert len(prints) == 9
    # Spelling out the fields that do not apply as null is the same request.
    spelled = {"upload_id": None, "task_id": TASK, "index": 0, "url": None}
    assert fingerprint(spelled) == fingerprint(task)


def test_a_url_reference_is_another_request_than_the_same_image_url() -> None:
    url = "https://e.com/a.png"
    as_reference = CreateTaskRequest.model_validate(
        {"prompt": "p", "reference_images": [{"url": url}]}
    )

    assert (
        as_reference.fingerprint() != CreateTaskRequest(prompt="p", image_urls=[url]).fingerprint()
    )


def test_list_items_are_named_by_index() -> None:
    assert field_path(["reference_images", 2, "index"]) == "reference_images[2].index"
    assert field_path(["image_urls", 0]) == "image_urls[0]"
    assert field_path(["metadata"]) == "metadata"
    assert field_path([]) == ""
    errors = [
        {"loc": ("body", "reference_images", 1), "msg": "Value error, no"},
        {"loc": ("query", "limit"), "msg": "too big"},
        {"loc": ("body",), "msg": "missing"},
    ]
    assert describe_validation(errors) == ("reference_images[1]: no; limit: too big; body: missing")
