"""GET /v1/usage with bad `from`/`to`: each answers 422 validation_error naming the parameter,
and nothing changes."""

from __future__ import annotations

import pytest

from tests.bad_input.conftest import Seeded, error_of
from tests.conftest import auth

CASES = [
    ("?from=2026-1-01", "from: must be a date written YYYY-MM-DD, got '2026-1-01'"),
    ("?from=20260101", "from: must be a date written YYYY-MM-DD, got '20260101'"),
    ("?to=2026-12-01T00:00:00", "to: must be a date written YYYY-MM-DD, got '2026-12-01T00:00:00'"),
    ("?to=yesterday", "to: must be a date written YYYY-MM-DD, got 'yesterday'"),
    ("?from=%EF%BC%92026-01-01", "from: must be a date written YYYY-MM-DD, got '\uff12026-01-01'"),
    ("?from=2026-02-30&to=2026-03-01", "from: no such date: '2026-02-30'"),
    ("?from=2026-01-01&to=2026-13-01", "to: no such date: '2026-13-01'"),
    ("?from=2026-03-02&to=2026-03-01", "from: 2026-03-02 is after to (2026-03-01)"),
    ("?from=2025-01-01&to=2026-01-02", "to: the range may span at most 366 days"),
    ("?from=0001-01-01&to=9999-12-31", "to: the range may span at most 366 days"),
]


@pytest.mark.parametrize(("query", "message"), CASES, ids=[case[0] for case in CASES])
async def test_a_bad_range_is_422_naming_the_parameter(
    seeded: Seeded, query: str, message: str
) -> None:
    before = await seeded.snapshot()

    response = await seeded.client.get(f"/v1/usage{query}", headers=auth())

    assert response.status_code == 422, response.text
    assert error_of(response) == {"code": "validation_error", "message": message}
    assert await seeded.snapshot() == before


async def test_an_overlong_bound_is_422(seeded: Seeded) -> None:
    before = await seeded.snapshot()

    response = await seeded.client.get(f"/v1/usage?to={'9' * 65}", headers=auth())

    assert response.status_code == 422, response.text
    error = error_of(response)
    assert error["code"] == "validation_error"
    assert "to" in error["message"]
    assert await seeded.snapshot() == before
