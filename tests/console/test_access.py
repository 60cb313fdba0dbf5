"""Who may enter the console: operators only, through the login form, with CSRF on every change;
caller keys do not open it and its cookie does not open the caller API."""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import AsyncIterator
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from itsdangerous import BadSignature, TimestampSigner, URLSafeTimedSerializer
from sqlalchemy import select

from app.console.auth import LOGIN_COOKIE, SESSION_COOKIE, ConsoleAuth, build, signing_key
from app.console.models import ConsoleSignout
from app.console.web import CONSOLE_MAX_BODY_BYTES
from app.core.clock import utcnow
from app.core.config import Settings
from tests.conftest import ALPHA_KEY, CALLBACK_SECRET, auth, settings_values
from tests.console.helpers import (
    OPERATOR_KEY,
    OPERATORS,
    OTHER_OPERATOR_KEY,
    console_settings,
    csrf_of,
    login,
    running_console,
    signed_in,
)
from tests.support.gateway import Gateway, running_gateway
from tests.support.rows import make_task

PAGES = ["/console", "/console/tasks", "/console/tasks/rows", "/console/overview/sections"]
TASK_ID = "00000000-0000-4000-8000-000000000000"


@pytest.fixture
async def gateway(sqlite_database_url: str) -> AsyncIterator[Gateway]:
    async with running_console(sqlite_database_url) as gateway:
        yield gateway


@pytest.fixture
async def gateway_on_both(database_url: str) -> AsyncIterator[Gateway]:
    """For checks that write to the database: SQLite and PostgreSQL."""
    async with running_console(database_url) as gateway:
        yield gateway


def session_cookies(response: httpx.Response) -> list[str]:
    return [
        header
        for header in response.headers.get_list("set-cookie")
        if header.startswith(f"{SESSION_COOKIE}=")
    ]


async def test_the_right_key_opens_a_session_with_a_strict_httponly_cookie(
    gateway: Gateway,
) -> None:
    response = await login(gateway.client)

    assert response.status_code == 303
    assert response.headers["location"] == "/console"
    [cookie] = session_cookies(response)
    attributes = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert "httponly" in attributes
    assert "samesite=strict" in attributes
    assert "path=/console" in attributes
    assert "max-age=43200" in attributes
    assert "secure" not in attributes  # the public base URL of the tests is http
    overview = await gateway.client.get("/console")
    assert overview.status_code == 200
    assert 'data-testid="status-counts"' in overview.text
    assert ">ops<" in overview.text


async def test_the_cookie_is_secure_when_the_service_is_public_over_https(
    sqlite_database_url: str,
) -> None:
    https = console_settings(sqlite_database_url, public_base_url="https://images.example.com")
    http = console_settings(sqlite_database_url)

    secure, plain = build(https), build(http)

    assert secure is not None
    assert secure.secure
    assert plain is not None
    assert not plain.secure


@pytest.mark.parametrize(
    "key",
    [ALPHA_KEY, "wrong-key-0123456789abcdef", "", OPERATOR_KEY + "x"],
    ids=["caller key", "wrong key", "empty", "operator key with a suffix"],
)
async def test_a_key_that_is_not_an_operator_key_is_refused_without_a_cookie(
    gateway: Gateway, key: str
) -> None:
    response = await login(gateway.client, key)

    assert response.status_code == 401
    assert "Wrong key" in response.text
    assert 'id="login"' in response.text  # the form again, with a fresh token
    assert session_cookies(response) == []
    assert (await gateway.client.get("/console")).status_code == 303


async def test_a_login_without_its_csrf_token_is_refused(gateway: Gateway) -> None:
    await gateway.client.get("/console/login")  # the login cookie is set, the token not sent

    missing = await gateway.client.post("/console/login", data={"key": OPERATOR_KEY})
    forged = await gateway.client.post(
        "/console/login", data={"key": OPERATOR_KEY, "csrf": "made-up-token"}
    )

    assert missing.status_code == forged.status_code == 403
    assert session_cookies(missing) == session_cookies(forged) == []


async def test_a_login_token_without_the_cookie_it_belongs_to_is_refused(
    gateway: Gateway,
) -> None:
    """Login CSRF: an attacker's page can carry a token but cannot set the victim's cookie."""
    token = csrf_of((await gateway.client.get("/console/login")).text)
    gateway.client.cookies.clear()

    response = await gateway.client.post(
        "/console/login", data={"key": OPERATOR_KEY, "csrf": token}
    )

    assert response.status_code == 403
    assert session_cookies(response) == []


@pytest.mark.parametrize("path", [*PAGES, f"/console/tasks/{TASK_ID}"])
async def test_anonymous_page_reads_go_to_the_login_form(gateway: Gateway, path: str) -> None:
    response = await gateway.client.get(path, params={"since": "1h"})

    assert response.status_code == 303
    location = urlsplit(response.headers["location"])
    assert location.path == "/console/login"
    assert parse_qs(location.query)["next"] == [f"{path}?since=1h"]


@pytest.mark.parametrize("path", ["/console/logout", f"/console/tasks/{TASK_ID}/retry"])
async def test_anonymous_posts_are_refused(gateway: Gateway, path: str) -> None:
    response = await gateway.client.post(path, data={"csrf": "x"})

    assert response.status_code == 403
    assert "sign in first" in response.text


@pytest.mark.parametrize("path", PAGES)
async def test_a_caller_api_key_does_not_open_the_console(gateway: Gateway, path: str) -> None:
    response = await gateway.client.get(path, headers=auth(ALPHA_KEY))
    refused = await gateway.client.post("/console/logout", headers=auth(ALPHA_KEY))
    as_key = await gateway.client.get(path, headers=auth(OPERATOR_KEY))

    assert response.status_code == 303
    assert response.headers["location"].startswith("/console/login")
    assert refused.status_code == 403
    assert as_key.status_code == 303  # an operator key is for the form, not a bearer token


async def test_a_console_session_does_not_open_the_caller_api(gateway: Gateway) -> None:
    await signed_in(gateway.client)
    cookie = gateway.client.cookies.get(SESSION_COOKIE)
    assert cookie

    for path in ["/v1/tasks", f"/v1/tasks/{TASK_ID}", f"/v1/tasks/{TASK_ID}/images/0"]:
        response = await gateway.client.get(path, headers={"Cookie": f"{SESSION_COOKIE}={cookie}"})
        assert response.status_code == 401, path
        assert response.json()["error"]["code"] == "unauthorized"


async def test_missing_or_foreign_csrf_tokens_are_refused(gateway: Gateway) -> None:
    task = await make_task(gateway.sessions)
    token = await signed_in(gateway.client)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=gateway.app), base_url="http://gateway"
    ) as other:
        other_token = await signed_in(other)
    assert other_token != token

    for path in ["/console/logout", f"/console/tasks/{task.id}/retry"]:
        for data in [{}, {"csrf": ""}, {"csrf": other_token}, {"csrf": token + "x"}]:
            response = await gateway.client.post(path, data=data)
            assert response.status_code == 403, (path, data)
            assert "CSRF" in response.text
    # Nothing happened: still signed in, the task untouched, nothing retried.
    assert (await gateway.client.get("/console")).status_code == 200
    assert (await gateway.task_row(task.id)).redriven_at is None


async def test_logout_clears_the_cookie(gateway: Gateway) -> None:
    token = await signed_in(gateway.client)

    response = await gateway.client.post("/console/logout", data={"csrf": token})

    assert response.status_code == 303
    assert response.headers["location"] == "/console/login"
    [cleared] = session_cookies(response)
    assert 'imagegen_console="";' in cleared or "max-age=0" in cleared.lower()
    assert (await gateway.client.get("/console")).status_code == 303


async def test_a_copy_of_a_signed_out_session_cookie_opens_nothing(
    gateway_on_both: Gateway,
) -> None:
    gateway = gateway_on_both
    task = await make_task(gateway.sessions)
    token = await signed_in(gateway.client)
    copied = gateway.client.cookies.get(SESSION_COOKIE)
    assert copied
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=gateway.app), base_url="http://gateway"
    ) as other_browser:
        await signed_in(other_browser)  # the same operator, another session

        await gateway.client.post("/console/logout", data={"csrf": token})
        replayed = {"Cookie": f"{SESSION_COOKIE}={copied}"}
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=gateway.app), base_url="http://gateway"
        ) as thief:
            page = await thief.get("/console", headers=replayed)
            image = await thief.get(f"/console/tasks/{task.id}/images/0", headers=replayed)
            retry = await thief.post(
                f"/console/tasks/{task.id}/retry", data={"csrf": token}, headers=replayed
            )
        still_in = await other_browser.get("/console")

    assert page.status_code == 303
    assert page.headers["location"].startswith("/console/login")
    assert image.status_code == 303
    assert retry.status_code == 403
    assert (await gateway.task_row(task.id)).redriven_at is None
    assert still_in.status_code == 200


async def test_signed_out_sessions_are_forgotten_once_their_cookies_expired(
    gateway_on_both: Gateway,
) -> None:
    gateway = gateway_on_both
    async with gateway.sessions() as session:
        session.add(
            ConsoleSignout(
                session_id="long-gone",
                operator="ops",
                signed_out_at=utcnow() - timedelta(days=2),
                expires_at=utcnow() - timedelta(days=1),
            )
        )
        await session.commit()
    token = await signed_in(gateway.client)

    await gateway.client.post("/console/logout", data={"csrf": token})

    async with gateway.sessions() as session:
        left = (await session.scalars(select(ConsoleSignout.session_id))).all()
    assert len(left) == 1
    assert left[0] != "long-gone"


async def test_a_forged_or_tampered_cookie_is_refused(gateway: Gateway) -> None:
    await signed_in(gateway.client)
    genuine = gateway.client.cookies.get(SESSION_COOKIE)
    assert genuine
    settings: Settings = gateway.app.state.settings
    other_secret = ConsoleAuth(
        settings.operators, b"another-secret-of-32-bytes-length", secure=False
    )
    forged = [
        genuine[:-2] + ("AA" if not genuine.endswith("AA") else "BB"),
        other_secret.login(OPERATOR_KEY) or "",
        URLSafeTimedSerializer(b"guess", salt="imagegen-console-session").dumps(
            {"o": "ops", "f": "x", "s": "y"}
        ),
        "ops",
    ]

    for value in forged:
        gateway.client.cookies.clear()
        gateway.client.cookies.set(SESSION_COOKIE, value)
        response = await gateway.client.get("/console")
        assert response.status_code == 303, value


def derived(root: bytes) -> bytes:
    """A cookie key derived from `root` the way the console derives its own."""
    return hmac.new(root, b"imagegen-console-v1", hashlib.sha256).digest()


def signs(key: bytes, cookie: str | None, salt: str) -> bool:
    """Whether `cookie` verifies with `key`: then it can be used to test guesses of `key`."""
    try:
        URLSafeTimedSerializer(key, salt=salt).loads(cookie or "")
    except BadSignature:
        return False
    return True


async def test_cookies_are_not_signed_with_a_key_of_the_callback_secret(gateway: Gateway) -> None:
    """Every visitor gets a login cookie: it must not let anyone test guesses of the secret that
    derives the callback tokens."""
    await gateway.client.get("/console/login")
    login_cookie = gateway.client.cookies.get(LOGIN_COOKIE)
    callback_key = derived(CALLBACK_SECRET.encode())
    settings: Settings = gateway.app.state.settings
    forged = ConsoleAuth(settings.operators, callback_key, secure=False).login(OPERATOR_KEY)

    gateway.client.cookies.set(SESSION_COOKIE, forged or "")
    response = await gateway.client.get("/console")

    assert login_cookie
    assert not signs(callback_key, login_cookie, "imagegen-console-login")
    assert response.status_code == 303  # the forged session opens nothing


async def test_sessions_follow_the_console_secret_and_not_the_callback_secret(
    sqlite_database_url: str,
) -> None:
    async with running_console(sqlite_database_url) as first:
        await signed_in(first.client)
        cookie = first.client.cookies.get(SESSION_COOKIE) or ""
    other_callback = "another-callback-secret-0123456789abcdefgh"
    other_console = "another-console-secret-0123456789abcdefghi"

    async with running_console(sqlite_database_url, callback_secret=other_callback) as replica:
        replica.client.cookies.set(SESSION_COOKIE, cookie)
        same_console_secret = await replica.client.get("/console")
    async with running_console(sqlite_database_url, console_secret=other_console) as stranger:
        stranger.client.cookies.set(SESSION_COOKIE, cookie)
        same_callback_secret = await stranger.client.get("/console")

    assert same_console_secret.status_code == 200
    assert same_callback_secret.status_code == 303


async def test_without_a_console_secret_in_simulator_mode_the_key_is_random_and_logged(
    sqlite_database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = console_settings(
        sqlite_database_url, provider="simulator", callback_secret=None, console_secret=None
    )
    pairs = "\n".join(sorted(OPERATORS.split(",")))  # the name:key pairs
    from_operator_keys = derived(hashlib.sha256(pairs.encode()).digest())

    with caplog.at_level(logging.WARNING, logger="app.console.router"):
        async with running_gateway(settings) as gateway:
            await signed_in(gateway.client)
            gateway.client.cookies.clear()
            await gateway.client.get("/console/login")
            login_cookie = gateway.client.cookies.get(LOGIN_COOKIE)

    assert login_cookie
    assert not signs(from_operator_keys, login_cookie, "imagegen-console-login")
    assert [record.getMessage() for record in caplog.records] == [
        "IMAGEGEN_CONSOLE_SECRET is not set: console sessions are signed with a random key of "
        "this process, so they end when it restarts and no other process accepts them"
    ]


class _Yesterday(TimestampSigner):
    def get_timestamp(self) -> int:
        return super().get_timestamp() - 13 * 3600


async def test_an_expired_cookie_is_refused(gateway: Gateway) -> None:
    auth_: ConsoleAuth = gateway.app.state.console_auth
    settings: Settings = gateway.app.state.settings
    old = URLSafeTimedSerializer(
        signing_key(settings), salt="imagegen-console-session", signer=_Yesterday
    )
    fresh = auth_.login(OPERATOR_KEY)
    assert fresh is not None
    payload = auth_.sessions.loads(fresh)

    gateway.client.cookies.set(SESSION_COOKIE, old.dumps(payload))
    expired = await gateway.client.get("/console")
    gateway.client.cookies.set(SESSION_COOKIE, fresh)
    current = await gateway.client.get("/console")

    assert auth_.max_age == timedelta(hours=12)
    assert expired.status_code == 303
    assert current.status_code == 200


async def test_removing_or_rotating_an_operator_key_ends_its_sessions(
    sqlite_database_url: str,
) -> None:
    async with running_console(sqlite_database_url) as before:
        await signed_in(before.client)
        ops_cookie = before.client.cookies.get(SESSION_COOKIE)
        before.client.cookies.clear()
        await login(before.client, OTHER_OPERATOR_KEY)
        root_cookie = before.client.cookies.get(SESSION_COOKIE)
    rotated = f"ops:rotated-operator-key-0123456789,root:{OTHER_OPERATOR_KEY}"

    async with running_console(sqlite_database_url, operator_keys=rotated) as after:
        after.client.cookies.set(SESSION_COOKIE, ops_cookie or "")
        ops = await after.client.get("/console")
        after.client.cookies.set(SESSION_COOKIE, root_cookie or "")
        root = await after.client.get("/console")

    assert ops.status_code == 303  # the key it was opened with is gone
    assert root.status_code == 200  # the other operator's key did not change


async def test_next_goes_back_to_a_console_page_and_nowhere_else(gateway: Gateway) -> None:
    local = await login(gateway.client, next="/console/tasks?status=failed")
    gateway.client.cookies.clear()
    targets = ["https://evil.example/console", "//evil.example/console", "/v1/tasks", "/\\evil"]
    elsewhere = [await login(gateway.client, next=target) for target in targets]

    assert local.headers["location"] == "/console/tasks?status=failed"
    assert [response.headers["location"] for response in elsewhere] == ["/console"] * 4


async def test_pages_carry_the_security_headers(gateway: Gateway) -> None:
    login_page = await gateway.client.get("/console/login")
    await signed_in(gateway.client)

    for response in [login_page, await gateway.client.get("/console/tasks")]:
        assert response.status_code == 200
        assert "default-src 'self'" in response.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["referrer-policy"] == "same-origin"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["cache-control"] == "no-store"


async def test_without_operator_keys_the_console_is_not_there(sqlite_database_url: str) -> None:
    async with running_gateway(Settings(**settings_values(sqlite_database_url))) as gateway:
        for path in ["/console", "/console/login", "/console/tasks", "/console/static/console.js"]:
            assert (await gateway.client.get(path)).status_code == 404, path
        assert (await gateway.client.post("/console/login", data={"key": "k"})).status_code == 404


async def test_console_routes_stay_out_of_the_openapi_document(gateway: Gateway) -> None:
    document = (await gateway.client.get("/openapi.json")).json()

    assert not [path for path in document["paths"] if path.startswith("/console")]


async def test_oversized_form_bodies_are_refused_before_they_are_read(gateway: Gateway) -> None:
    page = await gateway.client.get("/console/login")
    big = {"key": "k", "csrf": csrf_of(page.text), "pad": "x" * (2 * CONSOLE_MAX_BODY_BYTES)}
    declared = await gateway.client.post("/console/login", data=big)
    assert declared.status_code == 413

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        yield b"key=k&pad="
        for _ in range(4):
            yield b"x" * CONSOLE_MAX_BODY_BYTES

    streamed = await gateway.client.post(
        "/console/login",
        content=chunks(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert streamed.status_code == 413
    csrf = await signed_in(gateway.client)
    signed = await gateway.client.post(
        "/console/logout", data={"csrf": csrf, "pad": "x" * (2 * CONSOLE_MAX_BODY_BYTES)}
    )
    assert signed.status_code == 413
    for refused in (declared, streamed, signed):  # one answer however the size shows
        assert refused.headers["content-type"].startswith("text/html")
        assert refused.headers["x-frame-options"] == "DENY"
        assert f"over {CONSOLE_MAX_BODY_BYTES} bytes" in refused.text
