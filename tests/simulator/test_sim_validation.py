"""Create-request validation: every field gets the documented 400 with the right `param`."""

from __future__ import annotations

from typing import Any

import pytest

from app.core.urls import MAX_CALLBACK_URL_LENGTH
from app.provider.simulator import SimulatorConfig
from app.provider.simulator.validation import (
    MAX_PROMPT_TOKENS,
    count_tokens,
    is_internal_host,
    parse_create,
)
from app.provider.types import QUALITIES, SIZES

from .helpers import CREATE, assert_error, create_body, running

OMIT = object()

LONG_CALLBACK = "https://hooks.example.com/cb?" + "t" * MAX_CALLBACK_URL_LENGTH

INVALID: list[tuple[str, object, str]] = [
    ("model", OMIT, "model"),
    ("model", "gpt-image-1", "model"),
    ("model", None, "model"),
    ("prompt", OMIT, "prompt"),
    ("prompt", "", "prompt"),
    ("prompt", "   ", "prompt"),
    ("prompt", 42, "prompt"),
    ("prompt", ["a cat"], "prompt"),
    ("prompt", "word " * (MAX_PROMPT_TOKENS + 1), "prompt"),
    ("prompt", "x" * 20_000, "prompt"),
    ("size", "512x512", "size"),
    ("size", "1024X1024", "size"),
    ("size", 1024, "size"),
    ("quality", "ultra", "quality"),
    ("quality", "", "quality"),
    ("quality", 3, "quality"),
    ("image_urls", [], "image_urls"),
    ("image_urls", ["https://img.example.com/a.png"] * 17, "image_urls"),
    ("image_urls", "https://img.example.com/a.png", "image_urls"),
    ("image_urls", [123], "image_urls"),
    ("image_urls", ["ftp://img.example.com/a.png"], "image_urls"),
    ("image_urls", ["not a url"], "image_urls"),
    ("n", 2, "n"),
    ("n", 0, "n"),
    ("n", "1", "n"),
    ("n", True, "n"),
    ("callback_url", "http://hooks.example.com/cb", "callback_url"),
    ("callback_url", "ftp://hooks.example.com/cb", "callback_url"),
    ("callback_url", "https://localhost/cb", "callback_url"),
    ("callback_url", "https://api.localhost/cb", "callback_url"),
    ("callback_url", "https://127.0.0.1/cb", "callback_url"),
    ("callback_url", "https://127.1/cb", "callback_url"),
    ("callback_url", "https://10.1.2.3/cb", "callback_url"),
    ("callback_url", "https://172.16.0.1/cb", "callback_url"),
    ("callback_url", "https://172.31.255.254/cb", "callback_url"),
    ("callback_url", "https://192.168.1.10:8443/cb", "callback_url"),
    ("callback_url", "https://169.254.169.254/latest", "callback_url"),
    ("callback_url", "https://0.0.0.0/cb", "callback_url"),
    ("callback_url", "https://[::1]/cb", "callback_url"),
    ("callback_url", "https://[::ffff:10.0.0.1]/cb", "callback_url"),
    ("callback_url", "https://[::ffff:0:a00:1]/cb", "callback_url"),
    ("callback_url", "https://[fe80::1]/cb", "callback_url"),
    ("callback_url", "https:///cb", "callback_url"),
    ("callback_url", "https://hooks.example.com:99999/cb", "callback_url"),
    ("callback_url", "", "callback_url"),
    ("callback_url", 5, "callback_url"),
    ("callback_url", LONG_CALLBACK, "callback_url"),
]


def _body(field: str, value: object) -> dict[str, Any]:
    body = create_body()
    if value is OMIT:
        body.pop(field, None)
    else:
        body[field] = value
    return body


@pytest.mark.parametrize(("field", "value", "param"), INVALID)
async def test_invalid_field_is_rejected(field: str, value: object, param: str) -> None:
    async with running(SimulatorConfig()) as (sim, client):
        response = await client.post(CREATE, json=_body(field, value))
        assert_error(response, 400, "invalid_request", "invalid_request_error", param)
        assert sim.engine.tasks == {}
        assert (await client.get("/_sim/stats")).json()["creates_invalid"] == 1


@pytest.mark.parametrize(
    "raw", [b"", b"not json", b"{", b"[]", b'"text"', b"\xff\xfe", b"[" * 100_000]
)
async def test_non_object_body_is_rejected(raw: bytes) -> None:
    async with running(SimulatorConfig()) as (_, client):
        response = await client.post(
            CREATE, content=raw, headers={"Content-Type": "application/json"}
        )
        assert_error(response, 400, "invalid_request", "invalid_request_error")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("prompt", "word " * MAX_PROMPT_TOKENS),
        ("image_urls", [f"https://img.example.com/{i}.png" for i in range(16)]),
        ("image_urls", ["https://img.example.com/a.webp"]),
        ("callback_url", "https://hooks.example.com/" + "p" * (MAX_CALLBACK_URL_LENGTH - 26)),
        ("callback_url", "https://203.0.114.7/cb"),
        ("n", OMIT),
        ("image_urls", None),
        ("unknown_field", {"ignored": True}),
        *[("size", size) for size in SIZES],
        *[("quality", quality) for quality in QUALITIES],
    ],
)
async def test_valid_values_are_accepted(field: str, value: object) -> None:
    body = _body(field, value)
    if field == "callback_url":
        assert len(body["callback_url"]) <= MAX_CALLBACK_URL_LENGTH
    # Which bodies the create accepts, not whether their references can be used
    # (test_sim_references.py): the references at img.example.com are never downloaded.
    async with running(SimulatorConfig(fetch_references=False)) as (sim, client):
        response = await client.post(CREATE, json=body)
        assert response.status_code == 200, response.text
        (task,) = sim.engine.tasks.values()
        assert task.request == body
        assert task.references == []


async def test_defaults_for_size_and_quality() -> None:
    body = create_body()
    del body["size"], body["quality"]
    async with running(SimulatorConfig()) as (_, client):
        task_id = (await client.post(CREATE, json=body)).json()["id"]
        record = (await client.get(f"/_sim/tasks/{task_id}")).json()
        assert (record["size"], record["quality"]) == ("1024x1024", "high")
        assert record["request"] == body


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9000/cb",
        "http://localhost/cb",
        "https://10.0.0.5/cb",
        "http://192.168.0.2/cb",
    ],
)
async def test_private_callbacks_allowed_when_relaxed(url: str) -> None:
    async with running(SimulatorConfig(allow_private_callbacks=True)) as (_, client):
        response = await client.post(CREATE, json=create_body(callback_url=url))
        assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "url", ["ftp://127.0.0.1/cb", "http://127.0.0.1/" + "x" * MAX_CALLBACK_URL_LENGTH]
)
async def test_relaxed_callbacks_still_need_http_and_length(url: str) -> None:
    async with running(SimulatorConfig(allow_private_callbacks=True)) as (_, client):
        response = await client.post(CREATE, json=create_body(callback_url=url))
        assert_error(response, 400, "invalid_request", "invalid_request_error", "callback_url")


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("a cat", 2),
        ("A cat, sitting.", 5),
        ("1536x1024", 5),
        ("猫が座る", 4),
        ("x" * 400, 100),
        ("", 0),
    ],
)
def test_count_tokens(text: str, tokens: int) -> None:
    assert count_tokens(text) == tokens


@pytest.mark.parametrize(
    ("host", "internal"),
    [
        ("localhost", True),
        ("LOCALHOST.", True),
        ("127.0.0.1", True),
        ("2130706433", True),
        ("0x7f.1", True),
        ("10.255.0.1", True),
        ("172.15.0.1", False),
        ("172.16.0.1", True),
        ("172.32.0.1", False),
        ("192.168.0.1", True),
        ("169.254.1.1", True),
        ("100.64.0.1", True),  # shared address space (carrier-grade NAT): not public
        ("198.18.0.1", True),  # benchmarking range
        ("[::ffff:10.0.0.1]", True),
        ("[::ffff:0:a00:1]", True),  # IPv4-translated (RFC 6145)
        ("::ffff:0:127.0.0.1", True),
        ("[::ffff:8.8.8.8]", False),
        ("[::ffff:0:808:808]", False),
        ("::1", True),
        ("[fd00::1]", True),
        ("8.8.8.8", False),
        ("hooks.example.com", False),
        ("cafe.example", False),
    ],
)
def test_is_internal_host(host: str, internal: bool) -> None:
    assert is_internal_host(host) is internal


def test_parse_create_returns_the_body_as_received() -> None:
    raw = b'{"model": "gpt-image-1.5", "prompt": "a cat", "extra": [1, 2]}'
    body, params = parse_create(raw, allow_private_callbacks=False)
    assert body == {"model": "gpt-image-1.5", "prompt": "a cat", "extra": [1, 2]}
    assert (params.size, params.quality, params.image_urls, params.callback_url) == (
        "1024x1024",
        "high",
        (),
        None,
    )
