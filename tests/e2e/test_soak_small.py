"""The soak of bench/soak/ at CI size: 60 tasks with the same faults and disruptions (a
worker SIGKILLed, every database connection killed, S3 cut off for 10 s); every check holds."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from bench.soak import (
    CUT_BEFORE_ACCEPTANCE,
    LOST_AFTER_ACCEPTANCE,
    Delivery,
    Kill,
    SoakConfig,
    kill_casualty,
    resent_after_kill,
    run_soak,
)

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(300)
async def test_small_soak_loses_and_duplicates_nothing(
    postgres_server: str, tmp_path: Path
) -> None:
    lines: list[str] = []
    config = SoakConfig(
        tasks=60,
        rate=4.0,
        server_url=postgres_server,
        task_seconds=0.5,
        drain_timeout=150.0,
        seed=7,
        workdir=tmp_path,
        progress=lines.append,
    )
    report = await run_soak(config)
    rendered = report.render()
    print(rendered)
    assert report.ok, rendered + "\n" + "\n".join(lines)
    assert len(report.events) == 3, report.events
    assert (report.duplicates, report.losses) == (0, 0)
    names = {check.name for check in report.checks}
    assert "one notification per terminal task, none after a 2xx" in names


# --- what the soak counts apart, and only on evidence ----------------------------------------

KILL = Kill(at=100.0, replaced_at=100.05, worker_url="http://127.0.0.1:8001")
STARTED = datetime.fromtimestamp(99.9, UTC)


def post(at: float, answered: int) -> Delivery:
    return Delivery("msg_1", "task.succeeded", "t", "succeeded", answered, True, False, at)


def test_a_notification_sent_again_is_excused_only_by_a_kill_between_its_2xx_and_record() -> None:
    # 503 recorded, 2xx answered just before the kill and never recorded, sent again later.
    posts = [post(90.0, 503), post(99.99, 204), post(106.0, 204)]
    assert resent_after_kill(posts, 2, KILL)
    assert not resent_after_kill(posts, 3, KILL)  # every attempt recorded: a real duplicate
    assert not resent_after_kill(posts, 2, None)
    assert not resent_after_kill([post(90.0, 503), post(101.0, 204), post(106.0, 204)], 2, KILL)
    assert not resent_after_kill([post(90.0, 204), post(99.0, 204), post(106.0, 204)], 2, KILL)
    assert not resent_after_kill([post(99.99, 204)], 0, KILL)  # not sent again at all


def test_a_task_failed_by_a_kill_is_excused_only_with_its_evidence() -> None:
    row = {
        "status": "failed",
        "error_code": "provider_timeout",
        "provider_task_id": None,
        "submit_started_at": STARTED,
    }
    upstream = {
        "accepted_at": 99.95,
        "callback_url": f"{KILL.worker_url}/callbacks/evolink/t/token",
        "callback_dropped": True,
        "callbacks": [],
    }
    assert kill_casualty(row, [], KILL) == CUT_BEFORE_ACCEPTANCE
    assert kill_casualty(row, [upstream], KILL) == LOST_AFTER_ACCEPTANCE
    assert kill_casualty(row, [upstream, upstream], KILL) is None  # sent twice
    assert kill_casualty(row, [upstream], None) is None
    assert kill_casualty(row | {"submit_started_at": None}, [], KILL) is None
    assert kill_casualty(row | {"error_code": "archive_failed"}, [], KILL) is None
    delivered = upstream | {"callback_dropped": False, "callbacks": [{"status": 200}]}
    assert kill_casualty(row, [delivered], KILL) is None  # the callback could have told
    late = upstream | {"accepted_at": 100.1}  # sent by the replacement
    assert kill_casualty(row, [late], KILL) is None
