"""The soak of bench/soak.py at CI size: 60 tasks with the same faults and disruptions (a
worker SIGKILLed, every database connection killed, S3 cut off for 10 s); every check holds."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.soak import SoakConfig, run_soak

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
