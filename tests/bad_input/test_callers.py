"""Callers: every route of the REST API with bad keys, headers, bodies, path and query values.

Each case answers its exact status and error code in the one error shape, and changes nothing:
every row of every table is the same before and after, and an idempotency key sent with a
refused request is still free to use."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from app.core.body_cap import MAX_BODY_BYTES
from app.main import create_app
from tests.bad_input.conftest import CREATE, JSON, Seeded, error_of, settings
from tests.conftest import ALPHA_KEY, BETA_KEY, auth
from tests.support.gateway import Gateway, running_gateway
from tests.support.servers import serve_app

# Every operation of the REST API ({task_id}: the caller's own task). /console, health and
# metrics are not caller API; test_the_route_table_is_the_whole_api keeps this list complete.
ROUTES = [
    ("POST", CREATE),
    ("GET", "/v1/tasks"),
    ("GET", "/v1/tasks/{task_id}"),
    ("GET", "/v1/tasks/{task_id}/events"),
    ("GET", "/v1/tasks/{task_id}/images/{index}"),
    ("POST", "/v1/tasks/{task_id}/retry"),
    ("POST", "/v1/uploads"),
    ("GET", "/v1/uploads/{upload_id}"),
    ("GET", "/v1/uploads/{upload_id}/content"),
    ("DELETE", "/v1/uploads/{upload_id}"),
    ("GET", "/v1/usage"),
]
TASK_ROUTES = [route for route in ROUTES if "{task_id}" in route[1]]


V, BIG = "validation_error", "payload_too_large"
IK, CT, CL = b"idempotency-key", b"content-type", b"content-length"


def ids(table: list[tuple[Any, ...]]) -> list[str]:
    return [str(row[0]) for row in table]


def route_id(route: tuple[str, str]) -> str:
    return f"{route[0]} {route[1]}"


async def call(
    seeded: Seeded,
    route: tuple[str, str],
    headers: dict[str, str] | list[tuple[bytes, bytes]],
    task_id: str | None = None,
) -> httpx.Response:
    method, template = route
    # Upload routes get an id of the right shape (their bad input: test_uploads.py).
    path = template.format(
        task_id=task_id or seeded.mine["id"], index=0, upload_id="upl_" + "a" * 26
    )
    body = json.dumps({"prompt": "p"}).encode() if template == CREATE else None
    if isinstance(headers, dict):
        headers = headers | (JSON if body else {})
    return await seeded.client.request(method, path, content=body, headers=headers)


def test_the_route_table_is_the_whole_api() -> None:
    app = create_app(settings("sqlite+aiosqlite:///:memory:"))
    documented = {
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        if path.startswith("/v1/")
        for method in operations
    }
    assert documented == set(ROUTES)


# --- API keys ------------------------------------------------------------------------------

AUTH: list[tuple[str, list[tuple[bytes, bytes]]]] = [
    ("no header", []),
    ("basic scheme", [(b"authorization", f"Basic {ALPHA_KEY}".encode())]),
    ("token scheme", [(b"authorization", f"Token {ALPHA_KEY}".encode())]),
    ("no scheme", [(b"authorization", ALPHA_KEY.encode())]),
    ("empty token", [(b"authorization", b"Bearer ")]),
    ("blank token", [(b"authorization", b"Bearer    ")]),
    ("unknown key", [(b"authorization", b"Bearer unknown-key-0123456789abcdef")]),
    ("key with a suffix", [(b"authorization", f"Bearer {ALPHA_KEY}x".encode())]),
    ("truncated key", [(b"authorization", f"Bearer {ALPHA_KEY[:-1]}".encode())]),
    ("key in another header", [(b"x-api-key", ALPHA_KEY.encode())]),
    ("64 KiB token", [(b"authorization", b"Bearer " + b"k" * 65536)]),
    ("token not UTF-8", [(b"authorization", b"Bearer \xff\xfe\xfd")]),
]


@pytest.mark.parametrize(("case", "headers"), AUTH, ids=ids(AUTH))
async def test_a_bad_key_is_401_on_every_route(
    seeded: Seeded, case: str, headers: list[tuple[bytes, bytes]]
) -> None:
    before = await seeded.snapshot()
    answers = {}

    for route in ROUTES:
        response = await call(seeded, route, [*headers, (CT, b"application/json")])
        answers[route_id(route)] = (
            response.status_code,
            error_of(response)["code"],
            response.headers.get("www-authenticate"),
        )

    assert answers == {route_id(r): (401, "unauthorized", "Bearer") for r in ROUTES}, case
    assert await seeded.snapshot() == before


# Requests that would be refused for what they carry, sent without a key: the key comes first.
KEY = f"Bearer {ALPHA_KEY}".encode()
UNREAD: list[tuple[str, str, str, list[tuple[bytes, bytes]], bytes]] = [
    ("broken JSON", "POST", CREATE, [(CT, b"application/json")], b"{broken"),
    ("invalid fields", "POST", CREATE, [(CT, b"application/json")], b'{"prompt": "", "n": 3}'),
    ("not JSON", "POST", CREATE, [(CT, b"text/plain")], b"a lighthouse"),
    (
        "declared too large",
        "POST",
        CREATE,
        [(CT, b"application/json"), (CL, str(MAX_BODY_BYTES + 1).encode())],
        b"{" + b" " * MAX_BODY_BYTES + b"}",
    ),
    ("bad idempotency key", "POST", CREATE, [(CT, b"application/json"), (IK, b"")], b"{}"),
    ("bad limit", "GET", "/v1/tasks?limit=0&status=nonsense&cursor=%%%", [], b""),
    ("bad task id", "GET", "/v1/tasks/not-a-task", [], b""),
    ("bad image index", "GET", "/v1/tasks/{task_id}/images/99", [], b""),
    ("upload declared too large", "POST", "/v1/uploads", [(CL, b"%d" % (60 << 20))], b"x"),
    ("upload not an image", "POST", "/v1/uploads", [(CT, b"image/png")], b"GIF89a..."),
    ("upload of another type", "POST", "/v1/uploads", [(CT, b"text/plain")], b"text"),
]


@pytest.mark.parametrize(("case", "method", "path", "headers", "content"), UNREAD, ids=ids(UNREAD))
async def test_without_a_key_nothing_of_the_request_is_read_before_the_401(
    seeded: Seeded,
    case: str,
    method: str,
    path: str,
    headers: list[tuple[bytes, bytes]],
    content: bytes,
) -> None:
    before = await seeded.snapshot()
    target = path.format(task_id=seeded.mine["id"])

    response = await seeded.client.request(method, target, content=content, headers=headers)
    with_key = await seeded.client.request(
        method, target, content=content, headers=[*headers, (b"authorization", KEY)]
    )

    assert (response.status_code, error_of(response)["code"]) == (401, "unauthorized"), case
    assert response.headers["www-authenticate"] == "Bearer"
    assert with_key.status_code in (400, 404, 413, 415, 422), case  # refused for its content
    assert await seeded.snapshot() == before


async def test_another_callers_task_is_404_not_403_on_every_route(seeded: Seeded) -> None:
    before = await seeded.snapshot()
    answers = {}

    for route in TASK_ROUTES:
        response = await call(seeded, route, auth(BETA_KEY), task_id=seeded.mine["id"])
        answers[route_id(route)] = (response.status_code, error_of(response)["code"])

    assert answers == {route_id(r): (404, "not_found") for r in TASK_ROUTES}
    assert await seeded.snapshot() == before


async def test_another_callers_tasks_are_not_listed(seeded: Seeded) -> None:
    listed = await seeded.client.get("/v1/tasks", headers=auth(BETA_KEY))

    assert [task["id"] for task in listed.json()["data"]] == [seeded.theirs["id"]]


# --- headers -------------------------------------------------------------------------------

HEADERS: list[tuple[str, list[tuple[bytes, bytes]], int, str, str]] = [
    ("idempotency key empty", [(IK, b"")], 422, V, "Idempotency-Key"),
    ("idempotency key 256 chars", [(IK, b"k" * 256)], 422, V, "Idempotency-Key"),
    ("idempotency key 8 KiB", [(IK, b"k" * 8192)], 422, V, "Idempotency-Key"),
    ("idempotency key latin-1", [(IK, b"caf\xe9")], 422, V, "Idempotency-Key"),
    ("idempotency key utf-8", [(IK, "ключ".encode())], 422, V, "Idempotency-Key"),
    ("idempotency key tab", [(IK, b"a\tb")], 422, V, "Idempotency-Key"),
    ("idempotency key DEL", [(IK, b"a\x7fb")], 422, V, "Idempotency-Key"),
    ("content type text/plain", [(CT, b"text/plain")], 422, V, "body"),
    ("content type form", [(CT, b"application/x-www-form-urlencoded")], 422, V, "body"),
    ("content type multipart", [(CT, b"multipart/form-data; boundary=x")], 422, V, "body"),
    ("content type xml", [(CT, b"application/xml")], 422, V, "body"),
    ("no content type", [], 422, V, "body"),
    ("content length over the cap", [(CL, b"%d" % (MAX_BODY_BYTES + 1))], 413, BIG, "bytes"),
    ("content length 10 GB", [(CL, b"10000000000")], 413, BIG, "bytes"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "extra", "status", "code", "names"), HEADERS, ids=ids(HEADERS))
async def test_a_bad_header_is_refused_and_changes_nothing(
    seeded: Seeded, case: str, extra: list[tuple[bytes, bytes]], status: int, code: str, names: str
) -> None:
    before = await seeded.snapshot()
    headers = [(b"authorization", f"Bearer {ALPHA_KEY}".encode()), *extra]
    if not any(name == b"content-type" for name, _ in extra) and "content type" not in case:
        headers.append((CT, b"application/json"))
    if not any(name == b"idempotency-key" for name, _ in extra):
        headers.append((IK, case.replace(" ", "-").encode()))

    response = await seeded.client.post(CREATE, content=b'{"prompt": "p"}', headers=headers)

    assert response.status_code == status, response.text
    assert error_of(response)["code"] == code
    assert names in error_of(response)["message"]
    assert await seeded.snapshot() == before
    await seeded.key_still_works(case.replace(" ", "-"))


# --- bodies of POST /v1/images/generations --------------------------------------------------


def body(**fields: Any) -> bytes:
    """A create body: a valid prompt plus `fields` (json.dumps escapes lone surrogates)."""
    return json.dumps({"prompt": "p"} | fields).encode()


def with_metadata(raw: bytes) -> bytes:
    """A create body whose metadata is `raw`, JSON or not quite."""
    return b'{"prompt": "p", "metadata": ' + raw + b"}"


URLS = [f"https://e.com/{i}.png" for i in range(17)]
LONG_URL = "https://e.com/" + "a" * 2035
BODIES: list[tuple[str, bytes, int, str, str]] = [
    ("empty", b"", 422, V, "body"),
    ("not JSON", b"{not json", 422, V, "body: JSON decode error"),
    ("trailing comma", b'{"prompt": "p",}', 422, V, "at character 15"),
    ("prompt given twice", b'{"prompt": "a", "prompt": "b"}', 422, V, "'prompt' is given twice"),
    ("metadata name twice", with_metadata(b'{"k": 1, "k": 2}'), 422, V, "'k' is given twice"),
    ("not UTF-8", b'{"prompt": "\xff\xfe"}', 422, V, "not UTF-8"),
    ("array", b"[]", 422, V, "body"),
    ("null", b"null", 422, V, "body"),
    ("number", b"42", 422, V, "body"),
    ("string", b'"prompt"', 422, V, "body"),
    ("true", b"true", 422, V, "body"),
    ("over 1 MiB", b'{"prompt": "p"' + b" " * MAX_BODY_BYTES + b"}", 413, BIG, "bytes"),
    ("nested 100000 deep", b"[" * 100_000 + b"]" * 100_000, 422, V, "body"),
    ("5000-digit integer", with_metadata(b'{"x": 1' + b"0" * 5000 + b"}"), 422, V, "body"),
    ("unknown field", body(qualty="high"), 422, V, "qualty"),
    ("callback_url smuggled", body(callback_url="https://evil.example/cb"), 422, V, "callback_url"),
    ("prompt missing", b"{}", 422, V, "prompt"),
    ("prompt empty", body(prompt=""), 422, V, "prompt"),
    ("prompt blank", body(prompt=" \n\t"), 422, V, "prompt"),
    ("prompt null", body(prompt=None), 422, V, "prompt"),
    ("prompt number", body(prompt=42), 422, V, "prompt"),
    ("prompt list", body(prompt=["p"]), 422, V, "prompt"),
    ("prompt 32001 chars", body(prompt="x" * 32_001), 422, V, "prompt"),
    ("prompt NUL", body(prompt="a\x00b"), 422, V, "prompt"),
    ("prompt lone surrogate", body(prompt="a\ud800"), 422, V, "prompt"),
    ("model unknown", body(model="dall-e-3"), 422, V, "model"),
    ("model null", body(model=None), 422, V, "model"),
    ("size unknown", body(size="512x512"), 422, V, "size"),
    ("size upper case", body(size="1024X1024"), 422, V, "size"),
    ("size number", body(size=1024), 422, V, "size"),
    ("quality unknown", body(quality="ultra"), 422, V, "quality"),
    ("quality upper case", body(quality="HIGH"), 422, V, "quality"),
    ("quality empty", body(quality=""), 422, V, "quality"),
    ("n 2", body(n=2), 422, V, "n"),
    ("n 0", body(n=0), 422, V, "n"),
    ("n -1", body(n=-1), 422, V, "n"),
    ("n true", body(n=True), 422, V, "n"),
    ("n 1.0", body(n=1.0), 422, V, "n"),
    ("n string", body(n="1"), 422, V, "n"),
    ("n null", body(n=None), 422, V, "n"),
    ("image_urls 17", body(image_urls=URLS), 422, V, "image_urls"),
    ("image_urls not a list", body(image_urls=URLS[0]), 422, V, "image_urls"),
    ("image_urls null", body(image_urls=None), 422, V, "image_urls"),
    ("image_urls item number", body(image_urls=[1]), 422, V, "image_urls"),
    ("image_urls item object", body(image_urls=[{"url": URLS[0]}]), 422, V, "image_urls"),
    ("image_urls ftp", body(image_urls=["ftp://e.com/a.png"]), 422, V, "image_urls"),
    ("image_urls file", body(image_urls=["file:///etc/passwd"]), 422, V, "image_urls"),
    ("image_urls data", body(image_urls=["data:image/png;base64,AAAA"]), 422, V, "image_urls"),
    ("image_urls javascript", body(image_urls=["javascript:alert(1)"]), 422, V, "image_urls"),
    ("image_urls relative", body(image_urls=["/a.png"]), 422, V, "image_urls"),
    ("image_urls no host", body(image_urls=["https:///a.png"]), 422, V, "image_urls"),
    ("image_urls 2049 chars", body(image_urls=[LONG_URL]), 422, V, "image_urls"),
    ("image_urls newline", body(image_urls=["https://e.com/a\n.png"]), 422, V, "image_urls"),
    ("image_urls lone surrogate", body(image_urls=["https://e.com/\udc00"]), 422, V, "image_urls"),
    ("image_urls port 99999", body(image_urls=["https://e.com:99999/a"]), 422, V, "image_urls"),
    ("image_urls bad IPv6", body(image_urls=["https://[::1/a.png"]), 422, V, "image_urls"),
    ("metadata list", body(metadata=[1, 2]), 422, V, "metadata"),
    ("metadata string", body(metadata="{}"), 422, V, "metadata"),
    ("metadata over 4 KiB", body(metadata={"k": "v" * 4100}), 422, V, "metadata"),
    ("metadata NaN", with_metadata(b'{"x": NaN}'), 422, V, "metadata"),
    ("metadata Infinity", with_metadata(b'{"x": Infinity}'), 422, V, "metadata"),
    ("metadata 1e400", with_metadata(b'{"x": 1e400}'), 422, V, "metadata"),
    ("metadata lone surrogate", body(metadata={"x": "\ud800"}), 422, V, "metadata"),
    ("notify_url not a URL", body(notify_url="not a url"), 422, V, "notify_url"),
    ("notify_url javascript", body(notify_url="javascript:alert(1)"), 422, V, "notify_url"),
    ("notify_url number", body(notify_url=5), 422, V, "notify_url"),
    ("notify_url 2049 chars", body(notify_url=LONG_URL), 422, V, "notify_url"),
    ("notify_url NUL", body(notify_url="https://e.com/\x00"), 422, V, "notify_url"),
    ("notify_url lone surrogate", body(notify_url="https://e.com/\ud800"), 422, V, "notify_url"),
    ("notify_url port 65536", body(notify_url="https://e.com:65536/h"), 422, V, "notify_url"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "content", "status", "code", "names"), BODIES, ids=ids(BODIES))
async def test_a_bad_body_is_refused_naming_the_field_and_changes_nothing(
    seeded: Seeded, case: str, content: bytes, status: int, code: str, names: str
) -> None:
    before = await seeded.snapshot()
    key = f"bad-body-{case.replace(' ', '-')}"

    response = await seeded.client.post(
        CREATE, content=content, headers=auth() | JSON | {"Idempotency-Key": key}
    )

    assert response.status_code == status, response.text
    assert error_of(response)["code"] == code
    assert names in error_of(response)["message"]
    assert await seeded.snapshot() == before
    await seeded.key_still_works(key)


async def test_the_seeded_key_with_another_body_is_refused_and_changes_nothing(
    seeded: Seeded,
) -> None:
    before = await seeded.snapshot()

    response = await seeded.client.post(
        CREATE, json={"prompt": "other"}, headers=auth() | {"Idempotency-Key": "bad-input-key-1"}
    )

    assert response.status_code == 422
    assert error_of(response)["code"] == "idempotency_key_reused"
    assert await seeded.snapshot() == before


# What a service without private networks, or without a notify secret, refuses at create time
# (more addresses, and the connect-time refusal: tests/notify/test_ssrf.py).
PUBLIC_ONLY: list[tuple[str, dict[str, Any], str]] = [
    ("notify_url http", {}, "http://hooks.example.com/h"),
    ("notify_url loopback", {}, "https://127.0.0.1/h"),
    ("notify_url IPv6 loopback", {}, "https://[::1]/h"),
    ("notify_url IPv4-mapped", {}, "https://[::ffff:10.0.0.1]/h"),
    ("notify_url link-local", {}, "https://169.254.169.254/latest"),
    ("notify_url localhost", {}, "https://localhost/h"),
    ("notify_url decimal loopback", {}, "https://2130706433/h"),
    ("notify_url without a notify secret", {"notify_secret": None}, "https://hooks.example.com/h"),
]


@pytest.mark.parametrize(("case", "overrides", "url"), PUBLIC_ONLY, ids=ids(PUBLIC_ONLY))
async def test_a_notify_url_the_service_may_not_use_is_refused(
    database_url: str, case: str, overrides: dict[str, Any], url: str
) -> None:
    values = {"allow_private_networks": False, "public_base_url": "https://gw.example.com"}
    async with running_gateway(settings(database_url, **(values | overrides))) as gateway:
        response = await gateway.client.post(
            CREATE,
            json={"prompt": "p", "notify_url": url},
            headers=auth() | {"Idempotency-Key": "n1"},
        )
        again = await gateway.client.post(
            CREATE, json={"prompt": "p"}, headers=auth() | {"Idempotency-Key": "n1"}
        )
        tasks = await gateway.client.get("/v1/tasks", headers=auth())

    assert response.status_code == 422, case
    assert error_of(response)["code"] == "validation_error"
    assert error_of(response)["message"].startswith("notify_url: ")
    assert again.status_code == 202  # the key of the refused request is still free
    assert [task["id"] for task in tasks.json()["data"]] == [again.json()["id"]]


# --- path and query parameters --------------------------------------------------------------

UNKNOWN = "00000000-0000-4000-8000-000000000000"
PATHS: list[tuple[str, str, str, int, str]] = [
    ("task id not a UUID", "GET", "/v1/tasks/not-a-uuid", 404, "not_found"),
    ("task id unknown", "GET", f"/v1/tasks/{UNKNOWN}", 404, "not_found"),
    ("task id upper case", "GET", "/v1/tasks/{upper}", 404, "not_found"),
    ("task id with suffix", "GET", "/v1/tasks/{mine}x", 404, "not_found"),
    ("task id 2000 chars", "GET", "/v1/tasks/" + "a" * 2000, 404, "not_found"),
    ("task id NUL", "GET", "/v1/tasks/%00", 404, "not_found"),
    ("task id traversal", "GET", "/v1/tasks/..%2F..%2Fetc%2Fpasswd", 404, "not_found"),
    ("events of unknown task", "GET", f"/v1/tasks/{UNKNOWN}/events", 404, "not_found"),
    ("events not a UUID", "GET", "/v1/tasks/x/events", 404, "not_found"),
    ("retry unknown task", "POST", f"/v1/tasks/{UNKNOWN}/retry", 404, "not_found"),
    ("retry not a UUID", "POST", "/v1/tasks/%00/retry", 404, "not_found"),
    ("retry a queued task", "POST", "/v1/tasks/{mine}/retry", 409, "not_retryable"),
    ("image not archived", "GET", "/v1/tasks/{mine}/images/0", 404, "not_found"),
    ("image of unknown task", "GET", f"/v1/tasks/{UNKNOWN}/images/0", 404, "not_found"),
    ("image index -1", "GET", "/v1/tasks/{mine}/images/-1", 422, V),
    ("image index 16", "GET", "/v1/tasks/{mine}/images/16", 422, V),
    ("image index huge", "GET", "/v1/tasks/{mine}/images/9" + "9" * 20 + "", 422, V),
    ("image index not a number", "GET", "/v1/tasks/{mine}/images/x", 422, V),
    ("image index 1.5", "GET", "/v1/tasks/{mine}/images/1.5", 422, V),
    ("method not allowed: PUT create", "PUT", CREATE, 405, "method_not_allowed"),
    ("method not allowed: DELETE task", "DELETE", "/v1/tasks/{mine}", 405, "method_not_allowed"),
    ("method not allowed: GET retry", "GET", "/v1/tasks/{mine}/retry", 405, "method_not_allowed"),
    ("unknown route", "GET", "/v1/nothing-here", 404, "not_found"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "method", "path", "status", "code"), PATHS, ids=ids(PATHS))
async def test_a_bad_path_is_refused_and_changes_nothing(
    seeded: Seeded, case: str, method: str, path: str, status: int, code: str
) -> None:
    before = await seeded.snapshot()
    mine = seeded.mine["id"]

    response = await seeded.client.request(
        method, path.format(mine=mine, upper=mine.upper()), headers=auth()
    )

    assert response.status_code == status, response.text
    assert error_of(response)["code"] == code
    assert await seeded.snapshot() == before


def cursor(created: str, task_id: str) -> str:
    raw = json.dumps([created, task_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


QUERIES: list[tuple[str, str, str]] = [
    ("limit 0", "limit=0", "limit"),
    ("limit 101", "limit=101", "limit"),
    ("limit -1", "limit=-1", "limit"),
    ("limit huge", "limit=99999999999999999999999", "limit"),
    ("limit not a number", "limit=x", "limit"),
    ("limit 1e3", "limit=1e3", "limit"),
    ("status unknown", "status=done", "status"),
    ("status upper case", "status=QUEUED", "status"),
    ("cursor garbage", "cursor=garbage!!", "cursor"),
    ("cursor 513 chars", "cursor=" + "A" * 513, "cursor"),
    ("cursor NUL", "cursor=%00", "cursor"),
    ("cursor not base64 JSON", "cursor=" + base64.urlsafe_b64encode(b"hello").decode(), "cursor"),
    ("cursor not a pair", "cursor=" + base64.urlsafe_b64encode(b'["x"]').decode(), "cursor"),
    ("cursor not a date", "cursor=" + cursor("yesterday", UNKNOWN), "cursor"),
    ("cursor naive date", "cursor=" + cursor("2026-01-01T00:00:00", UNKNOWN), "cursor"),
    ("cursor id not a UUID", "cursor=" + cursor("2026-01-01T00:00:00+00:00", "x"), "cursor"),
    ("cursor id NUL", "cursor=" + cursor("2026-01-01T00:00:00+00:00", "\x00"), "cursor"),
]


@pytest.mark.parametrize(("case", "query", "names"), QUERIES, ids=ids(QUERIES))
async def test_a_bad_list_parameter_is_422_naming_it(
    seeded: Seeded, case: str, query: str, names: str
) -> None:
    response = await seeded.client.get(f"/v1/tasks?{query}", headers=auth())

    assert response.status_code == 422, response.text
    assert error_of(response)["code"] == "validation_error"
    assert error_of(response)["message"].startswith(f"{names}: ")


@pytest.mark.parametrize(
    "query", ["status=&limit=&cursor=", "status=", "limit=", "cursor=&status=", "&&status=&"]
)
async def test_an_empty_list_parameter_is_not_given(seeded: Seeded, query: str) -> None:
    plain = await seeded.client.get("/v1/tasks", headers=auth())

    response = await seeded.client.get(f"/v1/tasks?{query}", headers=auth())

    assert response.status_code == 200, response.text
    assert response.json() == plain.json()
    assert [task["id"] for task in response.json()["data"]] == [seeded.mine["id"]]


async def test_an_empty_parameter_does_not_hide_the_others(seeded: Seeded) -> None:
    none = await seeded.client.get("/v1/tasks?status=&status=failed&limit=", headers=auth())
    mine = await seeded.client.get(
        f"/v1/tasks?limit=&status={seeded.mine['status']}", headers=auth()
    )
    bad = await seeded.client.get("/v1/tasks?status=&limit=0", headers=auth())

    assert none.json() == {"data": [], "next_cursor": None}
    assert [task["id"] for task in mine.json()["data"]] == [seeded.mine["id"]]
    assert (bad.status_code, error_of(bad)["message"].split(":")[0]) == (422, "limit")


async def test_a_forged_cursor_pointing_at_another_callers_task_leaks_nothing(
    seeded: Seeded,
) -> None:
    future = datetime(2999, 1, 1, tzinfo=UTC).isoformat()

    response = await seeded.client.get(
        f"/v1/tasks?cursor={cursor(future, seeded.theirs['id'])}", headers=auth()
    )

    assert response.status_code == 200
    assert [task["id"] for task in response.json()["data"]] == [seeded.mine["id"]]


# --- over real HTTP: a Content-Length that lies ----------------------------------------------


@pytest.fixture
async def served(sqlite_database_url: str) -> AsyncIterator[tuple[str, Seeded]]:
    """The gateway on uvicorn (h11 reads the Content-Length) and a Seeded view of it."""
    app = create_app(settings(sqlite_database_url))
    async with serve_app(app) as url:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            mine = await client.post(
                CREATE,
                json={"prompt": "p"},
                headers=auth() | {"Idempotency-Key": "bad-input-key-1"},
            )
            gateway = Gateway(app=app, client=client)
            yield url, Seeded(gateway, client, mine.json(), {})


async def raw_exchange(url: str, request: bytes, *, close_write: bool = False) -> bytes:
    """Send raw bytes to the server; everything it answers before closing."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(request)
    await writer.drain()
    if close_write:
        writer.write_eof()
    try:
        return await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()


def raw_create(declared: int, payload: bytes) -> bytes:
    head = (
        f"POST {CREATE} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {ALPHA_KEY}\r\n"
        f"Content-Type: application/json\r\nIdempotency-Key: lying\r\n"
        f"Content-Length: {declared}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + payload


@pytest.mark.parametrize(
    ("case", "declared", "status"),
    [("declared shorter than the body", 5, b"422"), ("declared longer, then EOF", 1000, b"")],
    ids=["shorter", "longer"],
)
async def test_a_lying_content_length_makes_no_task(
    served: tuple[str, Seeded], case: str, declared: int, status: bytes
) -> None:
    url, seeded = served
    before = await seeded.snapshot()

    answer = await raw_exchange(url, raw_create(declared, b'{"prompt": "p"}'), close_write=True)

    assert answer.split(b" ")[1:2] == ([status] if status else []), answer
    assert await seeded.snapshot() == before
    await seeded.key_still_works("lying")
