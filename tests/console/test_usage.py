"""The console's usage page: operators only; every configured caller's tasks and credits per
day, an inline SVG chart, remaining budgets; everything escaped."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import update

from app.tasks.models import Task
from tests.conftest import ALPHA_KEY, BETA_KEY, auth
from tests.console.helpers import running_console, signed_in
from tests.support.gateway import Gateway
from tests.support.rows import make_task

SVG = "{http://www.w3.org/2000/svg}"
ODD = '<b>"odd"&amp;</b>'  # a caller name that HTML must not take for markup
ODD_KEY = "odd-key-0123456789abcdef"


def section(html: str, testid: str) -> str:
    found = re.search(rf'<section data-testid="{testid}">(.*?)</section>', html, re.S)
    assert found is not None, testid
    return found.group(1)


def chart_of(html: str) -> ET.Element:
    found = re.search(r"<svg .*?</svg>", section(html, "usage-chart"), re.S)
    assert found is not None
    return ET.fromstring(found.group(0))  # noqa: S314 (our own page) well-formed, or it raises


async def moved(gateway: Gateway, task_id: str, when: str, **values: object) -> None:
    created = datetime.fromisoformat(when).replace(tzinfo=UTC)
    async with gateway.sessions.begin() as session:
        await session.execute(
            update(Task).where(Task.id == task_id).values(created_at=created, **values)
        )


async def test_only_signed_in_operators_see_the_page(database_url: str) -> None:
    async with running_console(database_url) as gateway:
        anonymous = await gateway.client.get("/console/usage")
        with_a_caller_key = await gateway.client.get("/console/usage", headers=auth(ALPHA_KEY))
        await signed_in(gateway.client)
        page = await gateway.client.get("/console/usage")

    assert anonymous.status_code == with_a_caller_key.status_code == 303
    assert anonymous.headers["location"].startswith("/console/login")
    assert page.status_code == 200
    assert '<a data-nav="usage" href="/console/usage" aria-current="page">Usage</a>' in page.text


async def test_callers_days_chart_and_budgets(database_url: str, tmp_path: Path) -> None:
    limits = tmp_path / "limits.toml"
    limits.write_text("[callers.alpha]\ndaily_credits = 50\nmonthly_credits = 1000\n")
    keys = f"alpha:{ALPHA_KEY},beta:{BETA_KEY},{ODD}:{ODD_KEY}"
    async with running_console(database_url, api_keys=keys, limits_file=limits) as gateway:
        await signed_in(gateway.client)
        a1 = await make_task(gateway.sessions)
        a2 = await make_task(gateway.sessions)
        b1 = await make_task(gateway.sessions, caller="beta")
        odd = await make_task(gateway.sessions, caller=ODD)
        await moved(gateway, a1.id, "2025-03-01T10:00:00", credits=10)
        await moved(gateway, a2.id, "2025-03-02T10:00:00", credits=4, status="failed")
        await moved(gateway, b1.id, "2025-03-02T11:00:00", credits=6)
        await moved(gateway, odd.id, "2025-03-03T11:00:00", credits=2.5)
        page = await gateway.client.get("/console/usage?from=2025-03-01&to=2025-03-03")
        bad = await gateway.client.get("/console/usage?from=2025-03-04&to=2025-03-03")
        current = await gateway.client.get("/console/usage")

    assert page.status_code == 200, page.text
    html = page.text
    days = section(html, "usage-days")
    assert re.search(
        r"<td>alpha</td>\s*<td>2025-03-01</td>\s*<td>queued 1</td>\s*<td>10.0</td>", days
    )
    assert re.search(
        r"<td>alpha</td>\s*<td>2025-03-02</td>\s*<td>failed 1</td>\s*<td>4.0</td>", days
    )
    assert re.search(
        r"<td>beta</td>\s*<td>2025-03-02</td>\s*<td>queued 1</td>\s*<td>6.0</td>", days
    )
    # The odd caller name is text everywhere, never markup.
    assert ODD not in html
    assert "&lt;b&gt;&#34;odd&#34;&amp;amp;&lt;/b&gt;" in html
    chart = chart_of(html)
    bars = chart.findall(f"{SVG}rect")
    titles = sorted(rect.findtext(f"{SVG}title") or "" for rect in bars)
    assert titles == [
        f"{ODD}, 2025-03-03: 2.5 credits",
        "alpha, 2025-03-01: 10 credits",
        "alpha, 2025-03-02: 4 credits",
        "beta, 2025-03-02: 6 credits",
    ]
    # Stacked: the two bars of 2025-03-02 share an x, and the day of 10 credits is the tallest.
    heights = {rect.findtext(f"{SVG}title"): float(rect.get("height", 0)) for rect in bars}
    assert max(heights, key=lambda title: heights[title] or 0) == "alpha, 2025-03-01: 10 credits"
    second = [rect for rect in bars if "2025-03-02" in (rect.findtext(f"{SVG}title") or "")]
    assert len({rect.get("x") for rect in second}) == 1
    budgets = section(html, "usage-budgets")
    alpha = re.search(r'<tr data-caller="alpha">(.*?)</tr>', budgets, re.S)
    assert alpha is not None
    assert re.findall(r"<td>([^<]*)</td>", alpha.group(1)) == [
        "alpha",
        "50.0",
        "50.0",
        "1000.0",
        "1000.0",
    ]
    beta = re.search(r'<tr data-caller="beta">(.*?)</tr>', budgets, re.S)
    assert beta is not None
    assert "unlimited" in beta.group(1)
    assert bad.status_code == 422
    assert "from: 2025-03-04 is after to (2025-03-03)" in bad.text
    assert current.status_code == 200
    assert "No tasks in this range." in current.text
    assert chart_of(current.text).findall(f"{SVG}rect") == []
