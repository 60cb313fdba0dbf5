"""The limits file (IMAGEGEN_LIMITS_FILE): per-caller rate limits, active-task caps and credit
budgets, read once at start and refused whole, with one line naming the entry, when any of it is
wrong (docs/limits.md)."""

from __future__ import annotations

import math
import tomllib
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

WHOLE_KEYS = ("creates_per_minute", "max_active_tasks")
CREDIT_KEYS = ("daily_credits", "monthly_credits")
KEYS = WHOLE_KEYS + CREDIT_KEYS
TABLES = ("default", "callers")


class LimitsFileError(ValueError):
    """A limits file that cannot be used; the message names the file and the entry."""

    def __init__(self, path: Path, entry: str, problem: str) -> None:
        where = f"{path}: {entry}: " if entry else f"{path}: "
        super().__init__(f"{where}{problem}")


@dataclass(frozen=True, slots=True)
class CallerLimits:
    """One caller's limits; None means unlimited."""

    creates_per_minute: int | None = None
    max_active_tasks: int | None = None
    daily_credits: float | None = None
    monthly_credits: float | None = None

    @property
    def any(self) -> bool:
        """Whether a create of this caller has anything to check."""
        return any(getattr(self, name) is not None for name in KEYS)

    @property
    def has_budget(self) -> bool:
        return self.daily_credits is not None or self.monthly_credits is not None

    def as_dict(self) -> dict[str, int | float]:
        """The configured keys only (the shape `GET /v1/usage` shows as `limits`)."""
        return {name: value for name in KEYS if (value := getattr(self, name)) is not None}


@dataclass(frozen=True, slots=True)
class Limits:
    """The whole file: the default and each caller's overrides, merged key by key."""

    default: CallerLimits = field(default_factory=CallerLimits)
    callers: Mapping[str, CallerLimits] = field(default_factory=dict)

    def for_caller(self, caller: str) -> CallerLimits:
        return self.callers.get(caller, self.default)


NO_LIMITS = Limits()


def load_limits(path: Path, known_callers: Collection[str]) -> Limits:
    """Read and check the file; LimitsFileError on the first problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise LimitsFileError(path, "", f"cannot be read ({reason})") from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise LimitsFileError(path, "", f"not valid TOML ({exc})") from None
    return parse_limits(path, document, known_callers)


def parse_limits(path: Path, document: dict[str, Any], known_callers: Collection[str]) -> Limits:
    """The limits a parsed TOML document describes; LimitsFileError on the first problem."""
    for name in document:
        if name not in TABLES:
            raise LimitsFileError(
                path, name, f"unknown table or key; expected {' or '.join(TABLES)}"
            )
    default = _caller_limits(path, "default", document.get("default", {}), CallerLimits())
    callers_table = document.get("callers", {})
    if not isinstance(callers_table, dict):
        raise LimitsFileError(path, "callers", "must be a table of [callers.<name>] tables")
    callers: dict[str, CallerLimits] = {}
    for name, table in callers_table.items():
        entry = f"callers.{name}"
        if name not in known_callers:
            raise LimitsFileError(path, entry, "no such caller in IMAGEGEN_API_KEYS")
        callers[name] = _caller_limits(path, entry, table, default)
    return Limits(default=default, callers=callers)


def _caller_limits(path: Path, entry: str, table: object, base: CallerLimits) -> CallerLimits:
    if not isinstance(table, dict):
        raise LimitsFileError(path, entry, "must be a table")
    values: dict[str, Any] = {}
    for key, value in table.items():
        where = f"{entry}.{key}"
        if key in WHOLE_KEYS:
            values[key] = _whole(path, where, value)
        elif key in CREDIT_KEYS:
            values[key] = _credits(path, where, value)
        else:
            raise LimitsFileError(path, where, f"unknown key; expected one of {', '.join(KEYS)}")
    return replace(base, **values)


def _whole(path: Path, where: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise LimitsFileError(path, where, f"must be a whole number >= 0, got {_shown(value)}")
    return value


def _credits(path: Path, where: str, value: object) -> float:
    number = (
        float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
    )
    if number is None or not math.isfinite(number) or number < 0:
        raise LimitsFileError(path, where, f"must be a number of credits >= 0, got {_shown(value)}")
    return number


def _shown(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)[:60]
    if isinstance(value, dict | list):
        return "a table" if isinstance(value, dict) else "an array"
    return str(value)[:60]
