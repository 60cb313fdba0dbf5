"""Misconfiguration stops the process at start with one line naming the variable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from app.core.config import Settings, describe_error
from tests.support.servers import ROOT

VALID: dict[str, str] = {
    "IMAGEGEN_PROVIDER": "evolink",
    "IMAGEGEN_PROVIDER_API_KEY": "sk-evo-real-key",
    "IMAGEGEN_PUBLIC_BASE_URL": "https://gateway.example.com",
    "IMAGEGEN_CALLBACK_SECRET": "a" * 40,
    "IMAGEGEN_API_KEYS": "svc:svc-key-0123456789abcdef",
}
OPERATOR_KEYS = "ops:ops-key-0123456789abcdef"
CONSOLE_SECRET = "c" * 32
SIMULATOR = {"IMAGEGEN_PROVIDER": "simulator"}


def problem(monkeypatch: pytest.MonkeyPatch, **env: str | None) -> str:
    """The one-line error for VALID overridden by `env` (None removes a variable)."""
    for key in [k for k in os.environ if k.startswith("IMAGEGEN_")]:
        monkeypatch.delenv(key)
    for key, value in (VALID | env).items():
        if value is not None:
            monkeypatch.setenv(key, value)
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None)
    return describe_error(caught.value)


CASES: list[tuple[str, dict[str, str | None], str]] = [
    ("no provider key", {"IMAGEGEN_PROVIDER_API_KEY": None}, "IMAGEGEN_PROVIDER_API_KEY"),
    ("no public base url", {"IMAGEGEN_PUBLIC_BASE_URL": None}, "IMAGEGEN_PUBLIC_BASE_URL"),
    ("no callback secret", {"IMAGEGEN_CALLBACK_SECRET": None}, "IMAGEGEN_CALLBACK_SECRET"),
    ("empty callback secret", {"IMAGEGEN_CALLBACK_SECRET": ""}, "IMAGEGEN_CALLBACK_SECRET"),
    (
        "short callback secret",
        {"IMAGEGEN_CALLBACK_SECRET": "a" * 31},
        "IMAGEGEN_CALLBACK_SECRET: must be at least 32 characters",
    ),
    (
        "placeholder callback secret",
        {"IMAGEGEN_CALLBACK_SECRET": "CHANGEME"},
        "IMAGEGEN_CALLBACK_SECRET: must be at least 32 characters",
    ),
    (
        "operators without a console secret",
        {"IMAGEGEN_OPERATOR_KEYS": OPERATOR_KEYS},
        "IMAGEGEN_CONSOLE_SECRET: required when IMAGEGEN_OPERATOR_KEYS is set",
    ),
    (
        "operators with an empty console secret",
        {"IMAGEGEN_OPERATOR_KEYS": OPERATOR_KEYS, "IMAGEGEN_CONSOLE_SECRET": ""},
        "IMAGEGEN_CONSOLE_SECRET: required when IMAGEGEN_OPERATOR_KEYS is set",
    ),
    (
        "short console secret",
        {"IMAGEGEN_OPERATOR_KEYS": OPERATOR_KEYS, "IMAGEGEN_CONSOLE_SECRET": "c" * 31},
        "IMAGEGEN_CONSOLE_SECRET: must be at least 32 characters",
    ),
    (
        "short console secret without operators",
        {"IMAGEGEN_CONSOLE_SECRET": "console-secret"},
        "IMAGEGEN_CONSOLE_SECRET: must be at least 32 characters",
    ),
    (
        "http public base url",
        {"IMAGEGEN_PUBLIC_BASE_URL": "http://gateway.example.com"},
        "IMAGEGEN_PUBLIC_BASE_URL",
    ),
    (
        "loopback public base url",
        {"IMAGEGEN_PUBLIC_BASE_URL": "https://127.0.0.1:8000"},
        "IMAGEGEN_PUBLIC_BASE_URL",
    ),
    (
        "private public base url",
        {"IMAGEGEN_PUBLIC_BASE_URL": "https://192.168.1.10"},
        "IMAGEGEN_PUBLIC_BASE_URL",
    ),
    (
        "localhost public base url",
        {"IMAGEGEN_PUBLIC_BASE_URL": "https://localhost"},
        "IMAGEGEN_PUBLIC_BASE_URL",
    ),
    (
        "public base url too long for callbacks",
        {"IMAGEGEN_PUBLIC_BASE_URL": "https://gateway.example.com/" + "p" * 1960},
        "IMAGEGEN_PUBLIC_BASE_URL",
    ),
    (
        "public base url with a query",
        {"IMAGEGEN_PUBLIC_BASE_URL": "https://gateway.example.com/?x=1"},
        "IMAGEGEN_PUBLIC_BASE_URL",
    ),
    ("unknown storage", {"IMAGEGEN_STORAGE_URL": "ftp://bucket"}, "IMAGEGEN_STORAGE_URL"),
    ("storage without scheme", {"IMAGEGEN_STORAGE_URL": "./images"}, "IMAGEGEN_STORAGE_URL"),
    ("unknown database", {"IMAGEGEN_DATABASE_URL": "mysql://x/y"}, "IMAGEGEN_DATABASE_URL"),
    ("unknown provider", {"IMAGEGEN_PROVIDER": "openai"}, "IMAGEGEN_PROVIDER"),
    ("api keys not pairs", {"IMAGEGEN_API_KEYS": "justakey"}, "IMAGEGEN_API_KEYS"),
    ("api key empty", {"IMAGEGEN_API_KEYS": "svc:"}, "IMAGEGEN_API_KEYS"),
    ("database driver unknown", {"IMAGEGEN_DATABASE_URL": "postgresql+psycopg2://h/d"}, "DATABASE"),
    ("database url without scheme", {"IMAGEGEN_DATABASE_URL": "./var/x.db"}, "DATABASE_URL"),
    (
        "api key given twice",
        {"IMAGEGEN_API_KEYS": "a:same-key-0123456789,b:same-key-0123456789"},
        "IMAGEGEN_API_KEYS",
    ),
    ("operator keys bad", {"IMAGEGEN_OPERATOR_KEYS": "ops"}, "IMAGEGEN_OPERATOR_KEYS"),
    ("notify secret not whsec", {"IMAGEGEN_NOTIFY_SECRET": "abc"}, "IMAGEGEN_NOTIFY_SECRET"),
    (
        "notify secret not base64",
        {"IMAGEGEN_NOTIFY_SECRET": "whsec_!!!notbase64"},
        "IMAGEGEN_NOTIFY_SECRET",
    ),
    ("notify secret empty", {"IMAGEGEN_NOTIFY_SECRET": "whsec_"}, "IMAGEGEN_NOTIFY_SECRET"),
    ("poll after not a number", {"IMAGEGEN_POLL_AFTER_SECONDS": "soon"}, "IMAGEGEN_POLL_AFTER"),
    ("run workers not a bool", {"IMAGEGEN_RUN_WORKERS": "maybe"}, "IMAGEGEN_RUN_WORKERS"),
]


@pytest.mark.parametrize(("case", "env", "variable"), CASES, ids=[c[0] for c in CASES])
def test_misconfiguration_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, case: str, env: dict[str, str | None], variable: str
) -> None:
    line = problem(monkeypatch, **env)

    assert line.startswith("configuration error: "), case
    assert variable in line
    assert "\n" not in line


def test_valid_configuration_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in VALID.items():
        monkeypatch.setenv(key, value)

    settings = Settings(_env_file=None)

    assert settings.callers == {"svc-key-0123456789abcdef": "svc"}
    assert settings.poll_after_seconds.total_seconds() == 60
    assert settings.run_workers is True
    assert settings.database_url == "sqlite+aiosqlite:///./var/imagegen.db"
    assert settings.storage_url == "file://./var/images"


@pytest.mark.parametrize(
    "env",
    [
        {"IMAGEGEN_OPERATOR_KEYS": OPERATOR_KEYS, "IMAGEGEN_CONSOLE_SECRET": CONSOLE_SECRET},
        {"IMAGEGEN_CALLBACK_SECRET": "a" * 32},
        SIMULATOR | {"IMAGEGEN_OPERATOR_KEYS": OPERATOR_KEYS, "IMAGEGEN_CALLBACK_SECRET": None},
        SIMULATOR | {"IMAGEGEN_CALLBACK_SECRET": "short", "IMAGEGEN_CONSOLE_SECRET": "short"},
    ],
    ids=[
        "operators and a console secret",
        "secret of exactly 32",
        "simulator: operators without a console secret",
        "simulator: short secrets",
    ],
)
def test_console_and_callback_secrets_that_load(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str | None]
) -> None:
    for key, value in (VALID | env).items():
        if value is not None:
            monkeypatch.setenv(key, value)

    settings = Settings(_env_file=None)

    secret = settings.console_secret.get_secret_value() if settings.console_secret else None
    assert secret == env.get("IMAGEGEN_CONSOLE_SECRET")


WEAK: list[tuple[str, dict[str, str], str]] = [
    (
        "short api keys",
        {"IMAGEGEN_API_KEYS": "alice:alice-key,bob:b,carol:carol-key-0123456789"},
        "IMAGEGEN_API_KEYS: the keys of alice, bob are shorter than 16 characters",
    ),
    (
        "short operator key",
        {"IMAGEGEN_OPERATOR_KEYS": "ops:ops-key", "IMAGEGEN_CONSOLE_SECRET": CONSOLE_SECRET},
        "IMAGEGEN_OPERATOR_KEYS: the keys of ops are shorter than 16 characters",
    ),
    (
        "simulator: short callback secret",
        SIMULATOR | {"IMAGEGEN_CALLBACK_SECRET": "test-secret"},
        "IMAGEGEN_CALLBACK_SECRET: use at least 32 random characters",
    ),
    (
        "simulator: placeholder callback secret",
        SIMULATOR | {"IMAGEGEN_CALLBACK_SECRET": "CHANGEME"},
        "IMAGEGEN_CALLBACK_SECRET: use at least 32 random characters",
    ),
    (
        "simulator: short console secret",
        SIMULATOR | {"IMAGEGEN_CONSOLE_SECRET": "console-secret"},
        "IMAGEGEN_CONSOLE_SECRET: use at least 32 random characters",
    ),
    (
        "console secret the same as the callback secret",
        {"IMAGEGEN_CONSOLE_SECRET": "a" * 40},
        "IMAGEGEN_CONSOLE_SECRET: the same as IMAGEGEN_CALLBACK_SECRET",
    ),
    (
        "short notify secret",
        {"IMAGEGEN_NOTIFY_SECRET": "whsec_dGVzdA=="},
        "IMAGEGEN_NOTIFY_SECRET: use at least 24 random bytes",
    ),
]


@pytest.mark.parametrize(("case", "env", "line"), WEAK, ids=[c[0] for c in WEAK])
def test_weak_keys_and_secrets_work_and_are_reported(
    monkeypatch: pytest.MonkeyPatch, case: str, env: dict[str, str], line: str
) -> None:
    # Such a configuration runs, and says what is weak (with evolink a short callback or console
    # secret stops it instead, see CASES).
    for key, value in (VALID | env).items():
        monkeypatch.setenv(key, value)

    settings = Settings(_env_file=None)

    [found] = settings.weaknesses()
    assert found.startswith(line), case


def test_strong_keys_and_secrets_report_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in VALID.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("IMAGEGEN_NOTIFY_SECRET", "whsec_" + "A" * 32)
    monkeypatch.setenv("IMAGEGEN_OPERATOR_KEYS", OPERATOR_KEYS)
    monkeypatch.setenv("IMAGEGEN_CONSOLE_SECRET", CONSOLE_SECRET)

    assert Settings(_env_file=None).weaknesses() == []


@pytest.mark.parametrize(
    ("given", "used"),
    [
        ("postgresql://u:p@db:5432/app", "postgresql+asyncpg://u:p@db:5432/app"),
        ("postgres://db/app", "postgresql+asyncpg://db/app"),
        ("postgresql+asyncpg://db/app", "postgresql+asyncpg://db/app"),
        ("sqlite:///./var/x.db", "sqlite+aiosqlite:///./var/x.db"),
        ("sqlite+aiosqlite:////abs/x.db", "sqlite+aiosqlite:////abs/x.db"),
    ],
)
def test_a_database_url_without_the_async_driver_gets_it(
    monkeypatch: pytest.MonkeyPatch, given: str, used: str
) -> None:
    for key, value in VALID.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("IMAGEGEN_DATABASE_URL", given)

    assert Settings(_env_file=None).database_url == used


def test_durations_are_read_in_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in VALID.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("IMAGEGEN_POLL_AFTER_SECONDS", "90")
    monkeypatch.setenv("IMAGEGEN_JOB_LEASE_SECONDS", "2.5")

    settings = Settings(_env_file=None)

    assert settings.poll_after_seconds.total_seconds() == 90
    assert settings.job_lease_seconds.total_seconds() == 2.5


def test_private_base_url_is_allowed_for_development(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in VALID.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("IMAGEGEN_PUBLIC_BASE_URL", "http://127.0.0.1:8000")
    monkeypatch.setenv("IMAGEGEN_ALLOW_PRIVATE_NETWORKS", "true")

    settings = Settings(_env_file=None)

    assert settings.public_base_url == "http://127.0.0.1:8000"


def test_with_the_built_in_simulator_a_loopback_base_url_allows_no_private_network(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only the built-in simulator calls that URL; callers' URLs keep the refusal."""
    for key in [k for k in os.environ if k.startswith("IMAGEGEN_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("IMAGEGEN_PROVIDER", "simulator")
    monkeypatch.setenv("IMAGEGEN_PUBLIC_BASE_URL", "http://127.0.0.1:8000")

    settings = Settings(_env_file=None)

    assert settings.public_base_url == "http://127.0.0.1:8000"
    assert settings.allow_private_networks is False
    message = problem(monkeypatch, IMAGEGEN_PUBLIC_BASE_URL="http://127.0.0.1:8000")
    assert message.startswith("configuration error: IMAGEGEN_PUBLIC_BASE_URL must use https")


def test_secrets_do_not_show_in_the_settings_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in VALID.items():
        monkeypatch.setenv(key, value)

    text = repr(Settings(_env_file=None))

    assert "sk-evo-real-key" not in text
    assert "svc-key-0123456789abcdef" not in text
    assert "a" * 40 not in text


def run_cli(args: list[str], env: dict[str, Any], cwd: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEGEN_")}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env=clean | env | {"PYTHONPATH": str(ROOT)},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        (VALID | {"IMAGEGEN_PUBLIC_BASE_URL": "http://gateway.example.com"}, "PUBLIC_BASE_URL"),
        ({k: v for k, v in VALID.items() if k != "IMAGEGEN_PROVIDER_API_KEY"}, "PROVIDER_API_KEY"),
        (VALID | {"IMAGEGEN_STORAGE_URL": "nfs://share"}, "IMAGEGEN_STORAGE_URL"),
        ({k: v for k, v in VALID.items() if k != "IMAGEGEN_API_KEYS"}, "IMAGEGEN_API_KEYS"),
        (VALID | {"IMAGEGEN_CALLBACK_SECRET": "a" * 31}, "IMAGEGEN_CALLBACK_SECRET"),
        (VALID | {"IMAGEGEN_OPERATOR_KEYS": OPERATOR_KEYS}, "IMAGEGEN_CONSOLE_SECRET"),
        (
            VALID | {"IMAGEGEN_OPERATOR_KEYS": OPERATOR_KEYS, "IMAGEGEN_CONSOLE_SECRET": "short"},
            "IMAGEGEN_CONSOLE_SECRET",
        ),
    ],
    ids=[
        "http base url",
        "missing provider key",
        "unknown storage",
        "no caller keys",
        "short callback secret",
        "operators without a console secret",
        "short console secret",
    ],
)
def test_serve_refuses_to_start_with_one_clear_line(
    tmp_path: Path, env: dict[str, str], variable: str
) -> None:
    result = run_cli(["serve", "--port", "1"], env, tmp_path)

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("configuration error: ")
    assert variable in lines[0]


def test_a_dotenv_file_in_the_working_directory_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("IMAGEGEN_STORAGE_URL=nfs://from-dotenv\n")

    result = run_cli(["serve", "--port", "1"], VALID, tmp_path)

    assert result.returncode == 2
    assert "IMAGEGEN_STORAGE_URL" in result.stderr


def test_a_weak_configuration_starts_and_logs_each_weakness_once(tmp_path: Path) -> None:
    env = VALID | {
        "IMAGEGEN_PROVIDER": "simulator",  # with evolink a short callback secret stops it
        "IMAGEGEN_API_KEYS": "alice:alice-key",
        "IMAGEGEN_CALLBACK_SECRET": "test-secret",
        "IMAGEGEN_DATABASE_URL": f"sqlite:///{tmp_path}/gateway.db",
    }

    result = run_cli(["migrate"], env, tmp_path)

    assert result.returncode == 0, result.stderr
    warnings = [
        json.loads(line)["message"]
        for line in (result.stdout + result.stderr).splitlines()
        if "weak configuration" in line
    ]
    assert warnings == [
        "weak configuration: IMAGEGEN_API_KEYS: the keys of alice are shorter than 16 "
        "characters; use long random keys",
        "weak configuration: IMAGEGEN_CALLBACK_SECRET: use at least 32 random characters",
    ]
    assert (tmp_path / "gateway.db").exists()
