"""What a soak run found: its figures, its checks and the disruptions it made."""

from __future__ import annotations

from dataclasses import dataclass, field

from .config import SoakConfig


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Report:
    """Figures and checks of one run."""

    config: SoakConfig
    figures: list[tuple[str, str]] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    worker_killed_at: float | None = None  # wall clock of the SIGKILL
    worker_replaced_at: float | None = None  # the killed worker is dead; its replacement starts
    killed_worker_url: str | None = None  # its public base URL, which its callback URLs start with
    duplicates: int = 0
    losses: int = 0

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(check.ok for check in self.checks)

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append(Check(name, ok, detail))

    def render(self) -> str:
        width = max(len(name) for name, _ in self.figures) if self.figures else 10
        lines = ["", f"| {'measure':{width}} | value |", f"|{'-' * (width + 2)}|-------|"]
        lines += [f"| {name:{width}} | {value} |" for name, value in self.figures]
        lines += ["", "| check | result | detail |", "|---|---|---|"]
        lines += [f"| {c.name} | {'ok' if c.ok else 'FAILED'} | {c.detail} |" for c in self.checks]
        lines += ["", "disruptions: " + ("; ".join(self.events) or "none")]
        lines.append("result: " + ("every check passed" if self.ok else "FAILED"))
        return "\n".join(lines)
