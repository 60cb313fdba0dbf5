"""`/inputs/`: every name but a valid one of a live task's stored reference is the same `404`
(same body, same headers), changes no row and no object, and the valid name still serves.

The token rules themselves are tested in tests/references/test_input_tokens.py, the endpoint's
answers on both stores in tests/references/test_inputs_endpoint.py."""

from __future__ import annotations

import base64
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import pytest

from app.core.clock import utcnow
from app.core.input_tokens import input_expiry, input_key, input_path
from app.storage.store import ObjectStore
from app.tasks import repository
from app.tasks.models import Task
from tests.bad_input.conftest import Seeded
from tests.conftest import ALPHA_KEY, CALLBACK_SECRET, auth
from tests.support.reference_rows import (
    StoredReference,
    UrlReference,
    image_bytes,
    make_task_with_references,
)

KEY = input_key(CALLBACK_SECRET.encode())
PNG = image_bytes("image/png", shade=5)
NOT_FOUND = b'{"error":{"code":"not_found","message":"no such input"}}'
HEADERS = {
    "content-type": "application/json",
    "content-length": str(len(NOT_FOUND)),
    "x-content-type-options": "nosniff",
    "cache-control": "no-store",
}


@dataclass
class Inputs:
    """The seeded gateway with a live task (a URL reference, then a PNG upload), a terminal
    task and a task created 25 hours ago, each with an image in the store."""

    seeded: Seeded
    live: Task
    terminal: Task
    old: Task

    @property
    def store(self) -> ObjectStore:
        store: ObjectStore = self.seeded.gateway.app.state.store
        return store

    @property
    def good(self) -> str:
        return path_of(self.live, 1, "png")


def path_of(task: Task, position: int, extension: str) -> str:
    return input_path(KEY, task.id, position, input_expiry(task.created_at), extension)


@pytest.fixture
async def inputs(seeded: Seeded) -> Inputs:
    sessions = seeded.gateway.sessions
    store: ObjectStore = seeded.gateway.app.state.store
    live = await make_task_with_references(
        sessions, store, [UrlReference("https://images.example.com/r.png"), StoredReference(PNG)]
    )
    terminal = await make_task_with_references(
        sessions, store, [StoredReference(PNG)], status="failed"
    )
    old = await make_task_with_references(
        sessions, store, [StoredReference(PNG)], created_at=utcnow() - timedelta(hours=25)
    )
    return Inputs(seeded, live.task, terminal.task, old.task)


def tampered(path: str, index: int) -> str:
    token = path.removeprefix("/inputs/").removesuffix(".png")
    swapped = "B" if token[index] == "A" else "A"
    return f"/inputs/{token[:index]}{swapped}{token[index + 1 :]}.png"


def extended(path: str) -> str:
    """The same token with its expiry a year later and the old MAC."""
    raw = base64.urlsafe_b64decode(path.removeprefix("/inputs/").removesuffix(".png"))
    task, position, expires = struct.unpack(">16sBI", raw[:21])
    longer = struct.pack(">16sBI", task, position, expires + 365 * 86400) + raw[21:]
    return f"/inputs/{base64.urlsafe_b64encode(longer).decode()}.png"


BAD_PATHS: dict[str, Callable[[Inputs], str]] = {
    "tampered first character": lambda i: tampered(i.good, 0),
    "tampered middle character": lambda i: tampered(i.good, 20),
    "tampered last character": lambda i: tampered(i.good, 51),
    "expiry extended": lambda i: extended(i.good),
    "expired": lambda i: path_of(i.old, 0, "png"),
    "terminal task": lambda i: path_of(i.terminal, 0, "png"),
    "another extension": lambda i: path_of(i.live, 1, "jpg"),
    "webp for a png": lambda i: path_of(i.live, 1, "webp"),
    "gif extension": lambda i: i.good[:-3] + "gif",
    "no extension": lambda i: i.good[:-4],
    "upper-case extension": lambda i: i.good[:-3] + "PNG",
    "a url reference": lambda i: path_of(i.live, 0, "png"),
    "no such position": lambda i: path_of(i.live, 2, "png"),
    "unknown task": lambda i: input_path(KEY, str(uuid.uuid4()), 1, input_expiry(utcnow()), "png"),
    "another key": lambda i: input_path(
        input_key(b"x" * 40), i.live.id, 1, input_expiry(i.live.created_at), "png"
    ),
    "listing": lambda i: "/inputs/",
    "listing without slash": lambda i: "/inputs",
    "dot": lambda i: "/inputs/.",
    "only an extension": lambda i: "/inputs/.png",
    "garbage": lambda i: "/inputs/hello.png",
    "a task id": lambda i: f"/inputs/{i.live.id}.png",
    "long name": lambda i: "/inputs/" + "A" * 10_000 + ".png",
    "unicode": lambda i: "/inputs/%C3%A9t%C3%A9.png",
    "nul": lambda i: f"{i.good}%00",
    "encoded traversal": lambda i: "/inputs/%2e%2e/v1/tasks",
    "encoded slash traversal": lambda i: "/inputs/..%2F..%2Fetc%2Fpasswd",
    "backslash traversal": lambda i: "/inputs/..%5C..%5Cv1%5Ctasks",
    "an upload id": lambda i: "/inputs/uploads/alpha/upl_0123.png",
    "a store key": lambda i: "/inputs/" + "tasks/" + i.live.id + "/images/0",
    "nested under a good name": lambda i: f"{i.good}/x.png",
    "trailing slash": lambda i: f"{i.good}/",
}


@pytest.mark.parametrize("what", list(BAD_PATHS))
async def test_a_bad_name_is_the_one_404_and_changes_nothing(inputs: Inputs, what: str) -> None:
    client = inputs.seeded.client
    before = await inputs.seeded.snapshot()
    objects = await inputs.store.list_keys()

    got = await client.get(BAD_PATHS[what](inputs))
    head = await client.head(BAD_PATHS[what](inputs))

    assert (got.status_code, got.content, dict(got.headers)) == (404, NOT_FOUND, HEADERS)
    assert (head.status_code, dict(head.headers)) == (404, HEADERS)
    assert await inputs.seeded.snapshot() == before
    assert await inputs.store.list_keys() == objects
    assert (await client.get(inputs.good)).content == PNG


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
async def test_other_methods_on_a_good_name_are_the_one_404(inputs: Inputs, method: str) -> None:
    client = inputs.seeded.client
    before = await inputs.seeded.snapshot()
    objects = await inputs.store.list_keys()

    response = await client.request(method, inputs.good, content=b"x" * 1000)

    assert (response.status_code, response.content, dict(response.headers)) == (
        404,
        NOT_FOUND,
        HEADERS,
    )
    assert await inputs.seeded.snapshot() == before
    assert await inputs.store.list_keys() == objects
    assert (await client.get(inputs.good)).content == PNG


async def test_a_caller_key_changes_nothing_under_inputs(inputs: Inputs) -> None:
    # No caller key is needed, and none opens anything more.
    client = inputs.seeded.client

    good = await client.get(inputs.good, headers=auth(ALPHA_KEY))
    listing = await client.get("/inputs/", headers=auth(ALPHA_KEY))

    assert (good.status_code, good.content) == (200, PNG)
    assert (listing.status_code, listing.content) == (404, NOT_FOUND)


async def test_a_task_turning_terminal_closes_its_names(inputs: Inputs) -> None:
    client = inputs.seeded.client
    assert (await client.get(inputs.good)).status_code == 200
    async with inputs.seeded.gateway.sessions() as session:
        await repository.update_fields(session, inputs.live.id, {"status": "succeeded"})
        await session.commit()
    before = await inputs.seeded.snapshot()

    response = await client.get(inputs.good)

    assert (response.status_code, response.content) == (404, NOT_FOUND)
    assert await inputs.seeded.snapshot() == before
