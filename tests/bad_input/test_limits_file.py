"""A limits file that cannot be used stops the process at start with one line naming the file
and the entry (IMAGEGEN_LIMITS_FILE, docs/limits.md)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.core.config import Settings, describe_error

KEYS = "alpha:alpha-key-0123456789abcdef,beta:beta-key-0123456789abcdef"
PREFIX = "configuration error: IMAGEGEN_LIMITS_FILE: "

CASES = [
    (
        "[callers.alpha]\ncreates_per_minute = -1\n",
        "callers.alpha.creates_per_minute: must be a whole number >= 0, got -1",
    ),
    (
        "[default]\ncreates_per_minute = 2.5\n",
        "default.creates_per_minute: must be a whole number >= 0, got 2.5",
    ),
    (
        "[default]\nmax_active_tasks = true\n",
        "default.max_active_tasks: must be a whole number >= 0, got true",
    ),
    (
        '[default]\nmax_active_tasks = "10"\n',
        "default.max_active_tasks: must be a whole number >= 0, got '10'",
    ),
    (
        "[default]\ndaily_credits = -0.5\n",
        "default.daily_credits: must be a number of credits >= 0, got -0.5",
    ),
    (
        "[default]\nmonthly_credits = nan\n",
        "default.monthly_credits: must be a number of credits >= 0, got nan",
    ),
    (
        "[default]\nmonthly_credits = inf\n",
        "default.monthly_credits: must be a number of credits >= 0, got inf",
    ),
    (
        "[default]\ndaily_credits = false\n",
        "default.daily_credits: must be a number of credits >= 0, got false",
    ),
    (
        "[default]\ndaily_credits = [1, 2]\n",
        "default.daily_credits: must be a number of credits >= 0, got an array",
    ),
    (
        "[default]\nburst = 3\n",
        "default.burst: unknown key; expected one of creates_per_minute, max_active_tasks, "
        "daily_credits, monthly_credits",
    ),
    (
        "[defaults]\ncreates_per_minute = 3\n",
        "defaults: unknown table or key; expected default or callers",
    ),
    (
        "creates_per_minute = 3\n",
        "creates_per_minute: unknown table or key; expected default or callers",
    ),
    (
        "[callers.gamma]\ncreates_per_minute = 3\n",
        "callers.gamma: no such caller in IMAGEGEN_API_KEYS",
    ),
    ("default = 3\n", "default: must be a table"),
    ("callers = 3\n", "callers: must be a table of [callers.<name>] tables"),
    ("[callers]\nalpha = 3\n", "callers.alpha: must be a table"),
    (
        "[callers.beta]\nmonthly_credits = 10\n[callers.beta.extra]\nx = 1\n",
        "callers.beta.extra: unknown key; expected one of creates_per_minute, max_active_tasks, "
        "daily_credits, monthly_credits",
    ),
]


def settings_with(path: Path) -> Settings:
    return Settings(provider="simulator", api_keys=KEYS, limits_file=path)


def problem(path: Path) -> str:
    with pytest.raises(ValidationError) as raised:
        settings_with(path)
    return describe_error(raised.value)


@pytest.mark.parametrize(("text", "entry"), CASES, ids=[entry.split(":")[0] for _, entry in CASES])
def test_each_invalid_entry_is_named_in_one_line(tmp_path: Path, text: str, entry: str) -> None:
    path = tmp_path / "limits.toml"
    path.write_text(text)

    assert problem(path) == f"{PREFIX}{path}: {entry}"


def test_a_toml_syntax_error_names_the_file_and_the_line(tmp_path: Path) -> None:
    path = tmp_path / "limits.toml"
    path.write_text("[default]\ncreates_per_minute = = 3\n")

    line = problem(path)

    assert line.startswith(f"{PREFIX}{path}: not valid TOML (")
    assert "line 2" in line
    assert "\n" not in line


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.toml"

    assert problem(path) == f"{PREFIX}{path}: cannot be read (No such file or directory)"


def test_a_directory_is_refused(tmp_path: Path) -> None:
    assert problem(tmp_path).startswith(f"{PREFIX}{tmp_path}: cannot be read (")


def test_a_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "limits.toml"
    path.write_bytes(b"[default]\n# \xff\xfe\n")

    assert problem(path).startswith(f"{PREFIX}{path}: cannot be read (")


def test_a_valid_file_merges_callers_over_the_default_key_by_key(tmp_path: Path) -> None:
    path = tmp_path / "limits.toml"
    path.write_text(
        "[default]\ncreates_per_minute = 60\nmax_active_tasks = 20\ndaily_credits = 100\n"
        "[callers.alpha]\ndaily_credits = 250\nmonthly_credits = 3000\n"
    )

    limits = settings_with(path).limits

    alpha, beta = limits.for_caller("alpha"), limits.for_caller("beta")
    assert alpha.as_dict() == {
        "creates_per_minute": 60,
        "max_active_tasks": 20,
        "daily_credits": 250.0,
        "monthly_credits": 3000.0,
    }
    assert beta.as_dict() == {
        "creates_per_minute": 60,
        "max_active_tasks": 20,
        "daily_credits": 100.0,
    }
    assert isinstance(alpha.daily_credits, float)


def test_no_file_and_an_empty_variable_mean_no_limits() -> None:
    for value in (None, ""):
        limits = Settings(provider="simulator", api_keys=KEYS, limits_file=value).limits
        assert not limits.for_caller("alpha").any


def test_the_console_script_stops_with_the_one_line(tmp_path: Path) -> None:
    path = tmp_path / "limits.toml"
    path.write_text("[callers.alpha]\ncreates_per_minute = -1\n")
    script = Path(sys.executable).parent / "imagegen-gateway"
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEGEN_")} | {
        "IMAGEGEN_PROVIDER": "simulator",
        "IMAGEGEN_API_KEYS": KEYS,
        "IMAGEGEN_LIMITS_FILE": str(path),
        "IMAGEGEN_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/never.db",
    }

    result = subprocess.run(
        [str(script), "serve", "--port", "1"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f"{PREFIX}{path}: callers.alpha.creates_per_minute: must be a whole number >= 0, got -1"
    ]
    assert not (tmp_path / "never.db").exists()
