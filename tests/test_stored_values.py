"""The enumerations of stored strings: their values are the rows' (no migration), and the type
checker holds callers to them."""

from __future__ import annotations

from pathlib import Path

from mypy import api

from app.callbacks.models import DeliveryOutcome
from app.tasks.events import EventKind
from app.tasks.models import SubmitState
from app.tasks.notifications import NotificationState
from app.workers.models import JobKind, JobState

ROOT = Path(__file__).resolve().parents[1]


def test_the_stored_values_are_unchanged() -> None:
    assert list(JobKind) == ["submit", "poll", "archive", "notify"]
    assert list(JobState) == ["queued", "done", "dead"]
    assert list(SubmitState) == [
        "none",
        "in_flight",
        "retry",
        "uncertain",
        "accepted",
        "rejected",
    ]
    assert list(NotificationState) == ["pending", "delivered", "failed", "superseded"]
    assert list(EventKind) == ["transition", "submit", "poll", "archive", "notify", "redrive"]
    assert list(DeliveryOutcome) == ["applied", "malformed", "mismatch"]


def test_a_member_is_its_stored_string() -> None:
    # Rows read back hold plain strings: they compare, hash and format as the members do.
    stored: str = "poll"
    assert stored == JobKind.POLL
    assert hash(stored) == hash(JobKind.POLL)
    assert f"{JobState.QUEUED}" == str(JobState.QUEUED) == "queued"


SNIPPET = """\
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from app.tasks import event_repository as events
from app.workers.models import JobKind
from app.workers.repository import enqueue


async def calls(session: AsyncSession) -> None:
    now = datetime.now(UTC)
    await enqueue(session, JobKind.POLL, "task", now)
    await enqueue(session, "pol", "task", now)
    await events.record(session, "task", kind="submitted", source="submit", at=now)
"""


def test_the_type_checker_refuses_a_bare_string_for_a_kind(tmp_path: Path) -> None:
    snippet = tmp_path / "calls.py"
    snippet.write_text(SNIPPET)
    report, _, status = api.run(["--config-file", str(ROOT / "pyproject.toml"), str(snippet)])
    errors = [line for line in report.splitlines() if ": error: " in line]
    assert status == 1
    assert len(errors) == 2, report
    assert 'calls.py:13: error: Argument 2 to "enqueue" has incompatible type "str"; ' in errors[0]
    assert 'expected "JobKind"' in errors[0]
    assert 'calls.py:14: error: Argument "kind" to "record" has incompatible type' in errors[1]
    assert 'expected "EventKind"' in errors[1]
