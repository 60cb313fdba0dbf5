"""Misconfiguration stops the process at start with one line naming the variable."""

from __future__ import annotations

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
    ("short callback secret", {"IMAGEGEN_CALLBACK_SECRET": "short"}, "IMAGEGEN_CALLBACK_SECRET"),
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
    ("api key too short", {"IMAGEGEN_API_KEYS": "svc:short"}, "IMAGEGEN_API_KEYS"),
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
    ],
    ids=["http base url", "missing provider key", "unknown storage", "no caller keys"],
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
