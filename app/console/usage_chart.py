"""The usage page's bar chart: credits per day, stacked by caller, as plain geometry that the
template draws as inline SVG (no script; every text is escaped by the template)."""

from __future__ import annotations

from dataclasses import dataclass

from app.tasks.usage import DayUsage

WIDTH, HEIGHT = 960, 240
LEFT, BOTTOM, TOP = 56, 24, 8
# Fill colours by caller order (presentation attributes, allowed by the console's CSP).
PALETTE = ("#2f6fdf", "#e0812b", "#2a9d5b", "#c23b52", "#7a55c7", "#8c6d1f", "#1f8ea3", "#555")


@dataclass(frozen=True, slots=True)
class Bar:
    """One caller's credits on one day: a rectangle and its tooltip."""

    x: float
    y: float
    width: float
    height: float
    fill: str
    title: str


@dataclass(frozen=True, slots=True)
class Chart:
    width: int
    height: int
    bars: list[Bar]
    top_label: str  # the credits the top of the plot stands for
    first_day: str
    last_day: str
    legend: list[tuple[str, str]]  # (caller, fill)
    plot_left: int
    plot_bottom: int


def colour(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def credits_chart(usage: dict[str, list[DayUsage]]) -> Chart:
    """Bars of credits per day, one stack per day, one segment per caller (callers in order)."""
    callers = list(usage)
    days = usage[callers[0]] if callers else []
    totals = [sum(usage[caller][index].credits for caller in callers) for index in range(len(days))]
    scale_top = max(totals, default=0.0) or 1.0
    plot_width, plot_height = WIDTH - LEFT, HEIGHT - BOTTOM - TOP
    slot = plot_width / max(len(days), 1)
    bars: list[Bar] = []
    for index, _day in enumerate(days):
        base = float(HEIGHT - BOTTOM)
        for order, caller in enumerate(callers):
            day = usage[caller][index]
            if day.credits <= 0:
                continue
            height = day.credits / scale_top * plot_height
            base -= height
            bars.append(
                Bar(
                    x=round(LEFT + index * slot + slot * 0.1, 2),
                    y=round(base, 2),
                    width=round(slot * 0.8, 2),
                    height=round(height, 2),
                    fill=colour(order),
                    title=f"{caller}, {day.day.isoformat()}: {day.credits:g} credits",
                )
            )
    return Chart(
        width=WIDTH,
        height=HEIGHT,
        bars=bars,
        top_label=f"{scale_top:g}" if any(totals) else "0",
        first_day=days[0].day.isoformat() if days else "",
        last_day=days[-1].day.isoformat() if days else "",
        legend=[(caller, colour(order)) for order, caller in enumerate(callers)],
        plot_left=LEFT,
        plot_bottom=HEIGHT - BOTTOM,
    )
