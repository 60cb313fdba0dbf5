"""Every invalid create is a 422 naming the field, and nothing is saved or sent."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from app.core.config import Settings
from app.tasks.models import Task
from app.workers.models import Job
from tests.conftest import auth, settings_values
from tests.support.gateway import Gateway, running_gateway

URL = "/v1/images/generations"


@pytest.fixture
async def gateway(database_url: str) -> AsyncIterator[Gateway]:
    async with running_gateway(Settings(**settings_values(database_url))) as gateway:
        yield gateway


INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("missing prompt", {}, "prompt"),
    ("empty prompt", {"prompt": ""}, "prompt"),
    ("blank prompt", {"prompt": "   \n\t"}, "prompt"),
    ("prompt not a string", {"prompt": 42}, "prompt"),
    ("prompt with NUL", {"prompt": "a\x00b"}, "prompt"),
    ("prompt too long", {"prompt": "x" * 32_001}, "prompt"),
    ("unknown model", {"prompt": "p", "model": "dall-e-3"}, "model"),
    ("unknown size", {"prompt": "p", "size": "512x512"}, "size"),
    ("unknown quality", {"prompt": "p", "quality": "ultra"}, "quality"),
    ("n is 2", {"prompt": "p", "n": 2}, "n"),
    ("n is 0", {"prompt": "p", "n": 0}, "n"),
    ("n is true", {"prompt": "p", "n": True}, "n"),  # was accepted as 1
    ("n is 1.0", {"prompt": "p", "n": 1.0}, "n"),  # was accepted as 1
    ("17 image urls", {"prompt": "p", "image_urls": ["https://e.com/a.png"] * 17}, "image_urls"),
    ("ftp image url", {"prompt": "p", "image_urls": ["ftp://e.com/a.png"]}, "image_urls"),
    ("relative image url", {"prompt": "p", "image_urls": ["/a.png"]}, "image_urls"),
    ("image url not a string", {"prompt": "p", "image_urls": [1]}, "image_urls"),
    ("image urls not a list", {"prompt": "p", "image_urls": "https://e.com/a.png"}, "image_urls"),
    (
        "image url too long",
        {"prompt": "p", "image_urls": ["https://e.com/" + "a" * 2048]},
        "image_urls",
    ),
    ("metadata over 4 KiB", {"prompt": "p", "metadata": {"k": "v" * 4100}}, "metadata"),
    ("metadata not an object", {"prompt": "p", "metadata": [1, 2]}, "metadata"),
    ("notify_url not a URL", {"prompt": "p", "notify_url": "not a url"}, "notify_url"),
    ("notify_url javascript", {"prompt": "p", "notify_url": "javascript:alert(1)"}, "notify_url"),
    ("notify_url with NUL", {"prompt": "p", "notify_url": "https://e.com/\x00"}, "notify_url"),
    (
        "image url with newline",
        {"prompt": "p", "image_urls": ["https://e.com/a\n.png"]},
        "image_urls",
    ),
    ("unknown field", {"prompt": "p", "qualty": "high"}, "qualty"),
    # a lone surrogate in an image URL was saved, then every answer showing the task was a 500
    (
        "image url lone surrogate",
        {"prompt": "p", "image_urls": ["https://e.com/\ud800"]},
        "image_urls",
    ),
    (
        "notify_url lone surrogate",
        {"prompt": "p", "notify_url": "https://e.com/\udfff"},
        "notify_url",
    ),
    (
        "image url port out of range",
        {"prompt": "p", "image_urls": ["https://e.com:99999/a"]},
        "image_urls",
    ),
    (
        "notify_url port out of range",
        {"prompt": "p", "notify_url": "https://e.com:65536/h"},
        "notify_url",
    ),
]


@pytest.mark.parametrize(("case", "body", "field"), INVALID, ids=[c[0] for c in INVALID])
async def test_invalid_body_is_refused_naming_the_field(
    gateway: Gateway, case: str, body: dict[str, Any], field: str
) -> None:
    # json.dumps escapes what UTF-8 cannot carry (lone surrogates), as any JSON encoder may
    content = json.dumps(body).encode()
    headers = auth() | {"Content-Type": "application/json"}
    response = await gateway.client.post(URL, content=content, headers=headers)

    assert response.status_code == 422, case
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert field in error["message"]
    assert await gateway.count(Task) == 0
    assert await gateway.count(Job) == 0


@pytest.mark.parametrize(
    "content",
    [
        b'{"prompt": "p", "metadata": {"x": NaN}}',
        b'{"prompt": "p", "metadata": {"x": [Infinity]}}',
        b'{"prompt": "p", "metadata": {"x": -Infinity}}',
        b'{"prompt": "p", "metadata": {"x": 1e400}}',
    ],
    ids=["NaN", "Infinity", "-Infinity", "1e400"],
)
async def test_metadata_numbers_json_cannot_hold_are_refused(
    gateway: Gateway, content: bytes
) -> None:
    # were a 500 on PostgreSQL (json refuses NaN) and silently stored as null on SQLite
    response = await gateway.client.post(
        URL, content=content, headers=auth() | {"Content-Type": "application/json"}
    )

    assert response.status_code == 422
    assert response.json()["error"] == {
        "code": "validation_error",
        "message": "metadata: must be JSON: NaN and Infinity are not numbers",
    }
    assert await gateway.count(Task) == 0


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b"{not json", "application/json"),
        (b"[]", "application/json"),
        (b'"prompt"', "application/json"),
        (b"prompt=x", "application/x-www-form-urlencoded"),
        (b'{"prompt": "\xff\xfe"}', "application/json"),  # not UTF-8: was a 400, found by fuzzing
    ],
)
async def test_body_that_is_not_a_json_object_is_refused(
    gateway: Gateway, content: bytes, content_type: str
) -> None:
    response = await gateway.client.post(
        URL, content=content, headers=auth() | {"Content-Type": content_type}
    )

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "validation_error"
    assert await gateway.count(Task) == 0


@pytest.mark.parametrize(
    "key",
    [
        "",
        "k" * 256,
        "bad\nkey",
        "tab\tkey",
        "caf\xe9",
        "\u043a\u043b\u044e\u0447".encode().decode("latin-1"),
    ],
    ids=["empty", "256 chars", "newline", "tab", "latin-1", "utf-8"],  # the last two were accepted
)
async def test_bad_idempotency_key_is_refused(gateway: Gateway, key: str) -> None:
    headers = [(k.encode(), v.encode()) for k, v in auth().items()]
    response = await gateway.client.post(
        URL, json={"prompt": "p"}, headers=[*headers, (b"idempotency-key", key.encode("latin-1"))]
    )

    assert response.status_code == 422
    assert "Idempotency-Key" in response.json()["error"]["message"]
    assert await gateway.count(Task) == 0


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/hook",
        "https://10.0.0.8/hook",
        "https://[::1]/hook",
        "https://169.254.169.254/latest",
        "https://localhost/hook",
        "http://example.com/hook",
    ],
)
async def test_private_or_plain_http_notify_url_is_refused_when_not_allowed(
    sqlite_database_url: str, url: str
) -> None:
    settings = Settings(
        **settings_values(
            sqlite_database_url,
            allow_private_networks=False,
            public_base_url="https://gateway.example.com",
        )
    )
    async with running_gateway(settings) as gateway:
        response = await gateway.client.post(
            URL, json={"prompt": "p", "notify_url": url}, headers=auth()
        )

        assert response.status_code == 422
        assert "notify_url" in response.json()["error"]["message"]
        assert await gateway.count(Task) == 0


async def test_unusual_but_valid_text_is_stored_exactly(gateway: Gateway) -> None:
    body = {
        "prompt": "ünïcödé 画像 🎨 \u2028 'quotes' \"double\" \\ back",
        "metadata": {"nul": "\u0000", "nested": {"list": [1, None, True, 2.5]}, "": ""},
    }

    response = await gateway.client.post(URL, json=body, headers=auth())
    task = (await gateway.client.get(response.headers["location"], headers=auth())).json()

    assert response.status_code == 202
    assert task["prompt"] == body["prompt"]
    assert task["metadata"] == body["metadata"]


async def test_limits_that_are_exactly_allowed_are_accepted(gateway: Gateway) -> None:
    body = {
        "prompt": "x" * 32_000,
        "image_urls": [f"https://e.com/{i}.png" for i in range(16)],
        "metadata": {"k": "v" * 4000},
        "size": "2:3",
        "quality": "low",
        "n": 1,
    }

    response = await gateway.client.post(URL, json=body, headers=auth())

    assert response.status_code == 202, response.text
    assert await gateway.count(Task) == 1


@pytest.mark.parametrize(
    "content",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"prompt": "p", "metadata": ' + b'{"a": ' * 3000 + b"1" + b"}" * 3001,
        b'{"prompt": "p", "metadata": {"x": 1' + b"0" * 5000 + b"}}",
    ],
    ids=["nested 100000 deep", "metadata nested 3000 deep", "5001-digit integer"],
)
async def test_json_the_parser_gives_up_on_is_a_422(gateway: Gateway, content: bytes) -> None:
    # was a 400 `bad_request` the API documents nowhere
    response = await gateway.client.post(
        URL, content=content, headers=auth() | {"Content-Type": "application/json"}
    )

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "validation_error"
    assert response.json()["error"]["message"].startswith("body: ")
    assert await gateway.count(Task) == 0


async def test_a_broken_json_body_is_named_with_its_position(gateway: Gateway) -> None:
    response = await gateway.client.post(
        URL, content=b'{"prompt": "p",}', headers=auth() | {"Content-Type": "application/json"}
    )

    assert response.status_code == 422
    assert response.json()["error"]["message"] == (
        "body: JSON decode error (Expecting property name enclosed in double quotes) "
        "at character 15"
    )


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "streamed"])
async def test_a_body_over_one_mebibyte_is_refused_unread(gateway: Gateway, declared: bool) -> None:
    # any size used to be read whole (20 MB of whitespace made a task)
    padded = b'{"prompt": "p"' + b" " * (1024 * 1024) + b"}"

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(padded), 65536):
            yield padded[start : start + 65536]

    response = await gateway.client.post(
        URL,
        content=padded if declared else chunks(),
        headers=auth() | {"Content-Type": "application/json"},
    )

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert await gateway.count(Task) == 0


async def test_a_body_of_exactly_one_mebibyte_is_read(gateway: Gateway) -> None:
    head = b'{"prompt": "p"'
    padded = head + b" " * (1024 * 1024 - len(head) - 1) + b"}"

    response = await gateway.client.post(
        URL, content=padded, headers=auth() | {"Content-Type": "application/json"}
    )

    assert len(padded) == 1024 * 1024
    assert response.status_code == 202
