"""A task's `credits` column values: the provider's figure replacing the estimate."""

from __future__ import annotations

from typing import Any

from app.provider.types import ProviderTask
from app.tasks.models import CreditsSource, Task

# A create the provider refused (or whose references it refused) made nothing upstream.
NOTHING_BILLED: dict[str, Any] = {"credits": 0.0, "credits_source": CreditsSource.PROVIDER}


def provider_credits(news: ProviderTask) -> dict[str, Any]:
    """The columns that record the provider's figure in `news`; none when it reports none."""
    if news.credits is None:
        return {}
    return {"credits": news.credits, "credits_source": CreditsSource.PROVIDER}


def changed_credits(task: Task, news: ProviderTask) -> dict[str, Any]:
    """`provider_credits`, only when they differ from what the task has (an unchanged figure
    is not written again: the credits are indexed, and a write would cost the row its HOT
    update)."""
    values = provider_credits(news)
    if not values or (
        task.credits == values["credits"] and task.credits_source == CreditsSource.PROVIDER
    ):
        return {}
    return values
