"""The real service that the client's end-to-end tests drive, one per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.client.service import Service, start_service


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """`serve` on the simulator with SQLite and a file store, for a module of tests."""
    yield from start_service(tmp_path_factory.mktemp("gateway"))
