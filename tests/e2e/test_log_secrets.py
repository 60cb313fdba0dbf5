"""A full run of real processes, logging at DEBUG: every line of every process is one JSON
object, and no API key, provider key, secret or callback token appears in any of them."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from app.core.callback_tokens import callback_token
from app.core.db import create_engine, create_sessionmaker
from app.tasks.models import Task
from tests.conftest import ALPHA_KEY, BETA_KEY, CALLBACK_SECRET, CONSOLE_SECRET, auth
from tests.e2e.conftest import Processes, gateway_env, simulator_args
from tests.support.s3 import BUCKET, SECRET, S3Server
from tests.support.servers import free_port
from tests.support.waiting import eventually, wait_until_up

pytestmark = pytest.mark.e2e

# Shapes the log formatter has no pattern for: only masking the configured values catches them.
PROVIDER_KEY = "prov-live-9f8e7d6c5b4a39281706"
OPERATOR_KEY = "operator-key-5a4b3c2d1e0f9a8b"
NOTIFY_SECRET = "whsec_" + base64.b64encode(b"notify-secret-of-24-bytes+").decode()
WRONG_KEY = "not-a-real-key-0123456789abcdef"


def leaks(lines: list[str], secrets: list[str]) -> list[tuple[str, str]]:
    """(secret, line) for every line that contains one of the secrets."""
    return [(secret, line) for line in lines for secret in secrets if secret in line]


def test_the_leak_finder_finds_a_planted_token() -> None:
    token = callback_token(CALLBACK_SECRET.encode(), "00000000-0000-4000-8000-000000000000", "n")
    planted = json.dumps({"message": "callback", "path": f"/callbacks/evolink/x/{token}"})

    assert leaks(['{"message": "fine"}', planted], [PROVIDER_KEY, token]) == [(token, planted)]


async def task_tokens(database_url: str) -> list[str]:
    engine = create_engine(database_url)
    try:
        async with create_sessionmaker(engine)() as session:
            tasks = (await session.scalars(select(Task))).all()
    finally:
        await engine.dispose()
    return [callback_token(CALLBACK_SECRET.encode(), t.id, t.callback_nonce) for t in tasks]


async def test_no_secret_reaches_any_log_line(
    processes: Processes, pg_database_url: str, s3_server: S3Server
) -> None:
    sim_port, api_port = free_port(), free_port()
    sim_url, api_url = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{api_port}"
    simulator = processes.start(
        "simulator",
        simulator_args(
            sim_port, "--duration", "0.3", "--callback-duplicates", "2", "--api-key", PROVIDER_KEY
        ),
        {},
    )
    env = (
        gateway_env(
            pg_database_url,
            sim_url,
            api_url,
            storage_url=f"s3://{BUCKET}/{s3_server.new_prefix()}",
            poll_after_seconds=1,
            log_level="DEBUG",
        )
        | s3_server.env()
    )
    env |= {
        "IMAGEGEN_PROVIDER_API_KEY": PROVIDER_KEY,
        "IMAGEGEN_NOTIFY_SECRET": NOTIFY_SECRET,
        "IMAGEGEN_OPERATOR_KEYS": f"ops:{OPERATOR_KEY}",
    }
    api = processes.start(
        "api", ["serve", "--port", str(api_port)], env | {"IMAGEGEN_RUN_WORKERS": "false"}
    )
    await wait_until_up(f"{sim_url}/_sim/stats", simulator)
    await wait_until_up(f"{api_url}/healthz", api)
    processes.start("worker", ["worker"], env)
    async with httpx.AsyncClient(base_url=api_url) as client:
        ids = []
        for index in range(3):
            answer = await client.post(
                "/v1/images/generations",
                json={"prompt": f"p{index}"},
                headers=auth() | {"Idempotency-Key": f"k{index}"},
            )
            ids.append(answer.json()["id"])
        await client.post(  # a replay with the same key
            "/v1/images/generations",
            json={"prompt": "p0"},
            headers=auth() | {"Idempotency-Key": "k0"},
        )
        assert (await client.get("/v1/tasks", headers=auth(WRONG_KEY))).status_code == 401

        async def statuses() -> list[str]:
            return [
                (await client.get(f"/v1/tasks/{task_id}", headers=auth())).json()["status"]
                for task_id in ids
            ]

        await eventually(statuses, lambda found: found == ["succeeded"] * 3, timeout=60)
        tokens = await task_tokens(pg_database_url)
        forged = callback_token(b"another-secret-0123456789abcdefghij", ids[0], "nonce")
        for path in (
            f"/callbacks/evolink/{ids[0]}/{forged}",
            f"/callbacks/evolink/{ids[0]}/{tokens[0]}",
        ):
            await client.post(path, content=b"{not json")
        image = await client.get(f"/v1/tasks/{ids[0]}/images/0", headers=auth(BETA_KEY))
        assert image.status_code == 404  # another caller's task
        assert (await client.get("/metrics")).status_code == 200
        assert (await client.get("/readyz")).status_code == 200
    processes.stop_all()  # shutdown lines too

    # The gateway's processes; the simulator stands in for the provider, whose logs are not ours.
    lines = [
        line
        for process in processes.started
        if process.args[0] in ("serve", "worker")
        for line in Path(process.log_path).read_text().splitlines()
    ]
    secrets = [
        ALPHA_KEY,
        BETA_KEY,
        WRONG_KEY,
        PROVIDER_KEY,
        OPERATOR_KEY,
        CALLBACK_SECRET,
        CONSOLE_SECRET,
        NOTIFY_SECRET,
        NOTIFY_SECRET.removeprefix("whsec_"),
        SECRET,  # the S3 secret access key
        forged,
        *tokens,
    ]
    assert len(tokens) == 3
    assert len(lines) > 20
    assert [line for line in lines if not isinstance(json.loads(line), dict)] == []
    assert leaks(lines, secrets) == []
    logged = [json.loads(line) for line in lines]
    assert any(entry.get("message") == "callback refused" for entry in logged)
    assert any(entry.get("level") == "debug" for entry in logged)
