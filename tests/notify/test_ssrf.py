"""A notify_url may not reach private addresses: refused at create time when it names one,
refused at connect time when its name resolves to one (the receiver never sees a request)."""

from __future__ import annotations

import html
import ipaddress
import socket
from collections.abc import Sequence

import httpx
import pytest

from app.archive.presenting import present_tasks
from app.core import safe_http
from app.core.config import Settings
from app.core.urls import IPAddress
from app.notify.notifying import Notifier, NotifyContext, create_notify_client
from app.tasks import service
from app.tasks.states import ServiceFailure
from app.workers.models import Job, JobKind
from app.workers.outcomes import Done
from tests.conftest import auth, settings_values
from tests.console.helpers import OPERATORS, signed_in
from tests.notify.receiver import receiving
from tests.support.gateway import running_gateway
from tests.support.servers import free_port

HOOK_HOST = "hooks.example.test"  # a public-looking name that resolves to loopback
GATEWAY_ORIGIN = "https://gw.example.com"


def public_settings(database_url: str, **overrides: object) -> Settings:
    values = settings_values(
        database_url, allow_private_networks=False, public_base_url=GATEWAY_ORIGIN
    )
    return Settings(**(values | overrides))


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/hook",
        "https://10.1.2.3/hook",
        "https://[::ffff:192.168.0.1]/hook",
        "https://[::ffff:0:c0a8:1]/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://localhost/hook",
        "https://2130706433/hook",
        "http://hooks.example.com/hook",
    ],
)
async def test_a_private_or_plain_http_notify_url_is_refused_at_create_time(
    sqlite_database_url: str, url: str
) -> None:
    async with running_gateway(public_settings(sqlite_database_url)) as gateway:
        response = await gateway.client.post(
            "/v1/images/generations", json={"prompt": "p", "notify_url": url}, headers=auth()
        )

    assert response.status_code == 422
    assert response.json()["error"]["message"].startswith("notify_url: ")


async def test_a_notify_url_is_refused_when_no_notify_secret_is_configured(
    sqlite_database_url: str,
) -> None:
    settings = public_settings(sqlite_database_url, notify_secret=None)
    async with running_gateway(settings) as gateway:
        refused = await gateway.client.post(
            "/v1/images/generations",
            json={"prompt": "p", "notify_url": "https://hooks.example.com/x"},
            headers=auth(),
        )
        without = await gateway.client.post(
            "/v1/images/generations", json={"prompt": "p"}, headers=auth()
        )

    assert refused.status_code == 422
    assert "IMAGEGEN_NOTIFY_SECRET" in refused.json()["error"]["message"]
    assert without.status_code == 202


@pytest.mark.parametrize("allow_private", [False, True], ids=["public-only", "private-allowed"])
async def test_a_name_resolving_to_loopback_is_refused_at_connect_time(
    database_url: str, monkeypatch: pytest.MonkeyPatch, allow_private: bool
) -> None:
    real = safe_http.resolve_host

    async def resolve(host: str, port: int) -> Sequence[IPAddress]:
        if host == HOOK_HOST:
            return [ipaddress.ip_address("127.0.0.1")]
        return await real(host, port)

    monkeypatch.setattr(safe_http, "resolve_host", resolve)
    settings = public_settings(database_url, allow_private_networks=allow_private)
    async with receiving() as receiver, running_gateway(settings) as gateway:
        port = receiver.url.split(":")[2].split("/")[0]
        scheme = "http" if allow_private else "https"  # https is all a public service may use
        notify_url = f"{scheme}://{HOOK_HOST}:{port}/hooks/imagegen"
        created = await gateway.client.post(
            "/v1/images/generations", json={"prompt": "p", "notify_url": notify_url}, headers=auth()
        )
        task_id = created.json()["id"]
        failure = ServiceFailure("provider_timeout", "gave up")
        await service.apply_alone(gateway.sessions, task_id, failure, source="test")
        client = create_notify_client(settings)
        try:
            notifier = Notifier(NotifyContext(gateway.sessions, settings, client, present_tasks))
            outcome = await notifier(Job(kind=JobKind.NOTIFY, task_id=task_id, attempts=1))
        finally:
            await client.aclose()
        task = (await gateway.client.get(f"/v1/tasks/{task_id}", headers=auth())).json()

    assert created.status_code == 202  # a DNS name passes the create-time check
    assert outcome == Done()
    note = task["notification"]
    if allow_private:
        assert note["status"] == "delivered"
        assert len(receiver.deliveries) == 1
    else:
        assert note["status"] == "failed"  # given up at once: the address will not change
        assert note["attempts"] == 1
        assert note["last_error"] == "notify_url resolves to a non-public address"
        assert receiver.deliveries == []


# What a caller must never read about a notify_url: this service's addresses and resolver text.
NETWORK_WORDS = (
    "10.20.30.40",
    "127.0.0.1",
    "forbidden addresses",
    "cannot resolve",
    "cannot reach",
    "errno",
    "name or service",
    "connect call",
)


def unresolvable(host: str, port: int) -> Sequence[IPAddress]:
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


@pytest.mark.parametrize(
    ("case", "allow_private", "caller_error", "operator_detail"),
    [
        (
            "resolves to private addresses",
            False,
            "notify_url resolves to a non-public address",
            "forbidden addresses (10.20.30.40, 127.0.0.1)",
        ),
        (
            "cannot be resolved",
            False,
            "could not connect to the notify_url",
            f"cannot resolve {HOOK_HOST}: [Errno -2] Name or service not known",
        ),
        (
            "nothing listens",
            True,
            "could not connect to the notify_url",
            f"cannot reach {HOOK_HOST}: All connection attempts failed",
        ),
    ],
)
async def test_callers_get_a_generic_reason_and_operators_the_network_detail(
    sqlite_database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    case: str,
    allow_private: bool,
    caller_error: str,
    operator_detail: str,
) -> None:
    real = safe_http.resolve_host

    async def resolve(host: str, port: int) -> Sequence[IPAddress]:
        if host != HOOK_HOST:
            return await real(host, port)
        if case == "cannot be resolved":
            return unresolvable(host, port)
        if case == "resolves to private addresses":
            return [ipaddress.ip_address("10.20.30.40"), ipaddress.ip_address("127.0.0.1")]
        return [ipaddress.ip_address("127.0.0.1")]

    monkeypatch.setattr(safe_http, "resolve_host", resolve)
    settings = public_settings(
        sqlite_database_url, allow_private_networks=allow_private, operator_keys=OPERATORS
    )
    closed = free_port()  # nothing listens there
    notify_url = f"{'http' if allow_private else 'https'}://{HOOK_HOST}:{closed}/hooks"
    async with running_gateway(settings) as gateway:
        created = await gateway.client.post(
            "/v1/images/generations", json={"prompt": "p", "notify_url": notify_url}, headers=auth()
        )
        task_id = created.json()["id"]
        failure = ServiceFailure("provider_timeout", "gave up")
        await service.apply_alone(gateway.sessions, task_id, failure, source="test")
        client = create_notify_client(settings)
        try:
            notifier = Notifier(NotifyContext(gateway.sessions, settings, client, present_tasks))
            await notifier(Job(kind=JobKind.NOTIFY, task_id=task_id, attempts=1))
        finally:
            await client.aclose()
        task = await gateway.client.get(f"/v1/tasks/{task_id}", headers=auth())
        listed = await gateway.client.get("/v1/tasks", headers=auth())
        timeline = await gateway.client.get(f"/v1/tasks/{task_id}/events", headers=auth())
        # The console, from the origin it expects (its cookies are https-only here).
        transport = httpx.ASGITransport(app=gateway.app)
        async with httpx.AsyncClient(transport=transport, base_url=GATEWAY_ORIGIN) as browser:
            await signed_in(browser)
            console = await browser.get(f"/console/tasks/{task_id}")

    assert task.json()["notification"]["last_error"] == caller_error
    [line] = [line for line in timeline.json()["data"] if line["kind"] == "notify"]
    assert line["message"] == caller_error
    for text in (task.text, listed.text, timeline.text):
        assert not [word for word in NETWORK_WORDS if word in text.lower()]
    assert console.status_code == 200
    page = html.unescape(console.text)
    assert caller_error in page
    assert operator_detail in page
