"""A notify_url may not reach private addresses: refused at create time when it names one,
refused at connect time when its name resolves to one (the receiver never sees a request)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import pytest

from app.archive import fetch
from app.core.config import Settings
from app.notify.sender import Notifier, NotifyContext, create_notify_client
from app.tasks import service
from app.tasks.states import ServiceFailure
from app.workers.models import Job, JobKind
from app.workers.repository import Done
from tests.conftest import auth, settings_values
from tests.notify.receiver import receiving
from tests.support.gateway import running_gateway

HOOK_HOST = "hooks.example.test"  # a public-looking name that resolves to loopback


def public_settings(database_url: str, **overrides: object) -> Settings:
    values = settings_values(
        database_url, allow_private_networks=False, public_base_url="https://gw.example.com"
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
    real = fetch.resolve_host

    async def resolve(host: str, port: int) -> Sequence[fetch.IPAddress]:
        if host == HOOK_HOST:
            return [ipaddress.ip_address("127.0.0.1")]
        return await real(host, port)

    monkeypatch.setattr(fetch, "resolve_host", resolve)
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
            notifier = Notifier(NotifyContext(gateway.sessions, settings, client))
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
        assert "forbidden addresses (127.0.0.1)" in note["last_error"]
        assert receiver.deliveries == []
