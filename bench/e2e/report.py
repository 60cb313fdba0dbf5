"""What one rate measured, and the table of all of them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

HELD_P99 = 1.0  # seconds: a rate is held when every task succeeded with p99 under this


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile of `values` (NaN when empty)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


@dataclass
class RateResult:
    """One rate on one stack."""

    code: str  # commit of the gateway, or "bare"
    mode: str  # "one process", "split" or "bare"
    db: str
    rate: float
    sent: int = 0  # creates sent
    tasks: int = 0  # rows in the database after the drain
    succeeded: int = 0
    latencies: list[float] = field(default_factory=list)  # provider final -> succeeded, s
    drain: float | None = None  # last create sent -> last task terminal, s; None: not drained
    service_cpu: dict[str, float] = field(default_factory=dict)  # process -> CPU s in window
    machine_cpu: float = 0.0  # busy CPU s of the machine in the window

    @property
    def held(self) -> bool:
        all_ok = self.sent > 0 and self.succeeded == self.sent == self.tasks
        return all_ok and self.drain is not None and percentile(self.latencies, 0.99) < HELD_P99

    def per_task_ms(self, seconds: float) -> float:
        return 1000 * seconds / self.tasks if self.tasks else math.nan


def _ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{1000 * seconds:.0f}"


def row(result: RateResult) -> str:
    lat = result.latencies
    service = " + ".join(f"{result.per_task_ms(cpu):.1f}" for cpu in result.service_cpu.values())
    drain = "not drained" if result.drain is None else f"{result.drain:.1f}"
    cells = [
        result.code,
        result.mode,
        result.db,
        f"{result.rate:g}",
        f"{result.tasks}/{result.sent}",
        str(result.succeeded),
        *(_ms(percentile(lat, f)) for f in (0.5, 0.95, 0.99)),
        _ms(max(lat) if lat else math.nan),
        drain,
        service,
        f"{result.per_task_ms(result.machine_cpu):.1f}",
        "yes" if result.held else "no",
    ]
    return "| " + " | ".join(cells) + " |"


HEADER = (
    "| code | mode | db | rate/s | tasks/sent | ok | p50 ms | p95 ms | p99 ms | max ms "
    "| drain s | service CPU ms/task | machine CPU ms/task | held |"
)
RULE = "| --- | --- | --- |" + " ---: |" * 10 + " --- |"


def held_rate(results: list[RateResult]) -> float:
    """The highest rate held (0 when none was)."""
    return max((r.rate for r in results if r.held), default=0.0)


def table(results: list[RateResult]) -> str:
    """The markdown table, then one 'held rate' line per gateway (code, mode, db)."""
    ordered = sorted(results, key=lambda r: (r.mode == "bare", r.code, r.mode, r.db, r.rate))
    lines = [HEADER, RULE, *(row(r) for r in ordered), ""]
    groups: dict[tuple[str, str, str], list[RateResult]] = {}
    for result in ordered:
        groups.setdefault((result.code, result.mode, result.db), []).append(result)
    for (code, mode, db), members in groups.items():
        if mode == "bare":
            continue
        gateway = held_rate(members)
        bare = held_rate(groups.get(("bare", "bare", db), []))
        ratio = f"{gateway / bare:.2f}" if bare else "-"
        lines.append(
            f"held rate ({code}, {mode}, {db}): gateway {gateway:g}/s, bare {bare:g}/s, "
            f"ratio {ratio}"
        )
    return "\n".join(lines)
