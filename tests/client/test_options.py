"""Flags of `generate`, their environment variables, and the usage errors (exit 2)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from app.client import command
from app.client.options import Stop, resolve_options
from tests.client.fakes import parse

KEY_ENV = {"IMAGEGEN_GATEWAY_API_KEY": "env-key-0123456789"}


def test_defaults_and_environment(tmp_path: Path) -> None:
    out = tmp_path / "x.png"

    options = resolve_options(parse("a heron", "--out", str(out)), KEY_ENV)

    assert options.url == "http://127.0.0.1:8000"
    assert options.api_key == "env-key-0123456789"
    assert options.timeout == 600.0
    assert options.out == out
    assert options.idempotency_key.startswith("cli-")
    assert options.body() == {"prompt": "a heron"}


def test_environment_fills_what_flags_do_not_give(tmp_path: Path) -> None:
    env = KEY_ENV | {
        "IMAGEGEN_GATEWAY_URL": "https://images.internal/",
        "IMAGEGEN_GATEWAY_TIMEOUT": "30",
    }

    options = resolve_options(parse("p", "-o", str(tmp_path / "x.png")), env)

    assert (options.url, options.timeout) == ("https://images.internal", 30.0)


def test_flags_win_over_the_environment(tmp_path: Path) -> None:
    env = KEY_ENV | {"IMAGEGEN_GATEWAY_URL": "http://a:1", "IMAGEGEN_GATEWAY_TIMEOUT": "30"}
    args = parse(
        "p",
        "-o",
        str(tmp_path / "x.png"),
        "--url",
        "http://b:2",
        "--api-key",
        "flag-key",
        "--timeout",
        "7.5",
        "--idempotency-key",
        "mine",
    )

    options = resolve_options(args, env)

    assert (options.url, options.api_key, options.timeout) == ("http://b:2", "flag-key", 7.5)
    assert options.idempotency_key == "mine"


def test_each_run_gets_its_own_idempotency_key(tmp_path: Path) -> None:
    args = parse("p", "-o", str(tmp_path / "x.png"))

    assert (
        resolve_options(args, KEY_ENV).idempotency_key
        != resolve_options(args, KEY_ENV).idempotency_key
    )


def test_image_urls_repeat() -> None:
    args = parse("p", "-o", "x.png", "--image-url", "https://a/1.png", "--image-url", "https://a/2")

    assert args.image_urls == ["https://a/1.png", "https://a/2"]


@pytest.mark.parametrize(
    "argv",
    [
        ["p", "-o", "x.png", "--size", "999x999"],
        ["p", "-o", "x.png", "--quality", "ultra"],
        ["p"],  # --out is required
        ["-o", "x.png"],  # so is the prompt
    ],
)
def test_bad_flags_are_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse(*argv)

    assert exited.value.code == 2
    assert "usage: imagegen-gateway generate" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "env", "message"),
    [
        ([], {}, "no API key: pass --api-key or set IMAGEGEN_GATEWAY_API_KEY"),
        (["--api-key", "  "], {}, "no API key"),
        (["--url", "ftp://x"], KEY_ENV, "--url / IMAGEGEN_GATEWAY_URL: not an http(s) URL"),
        ([], KEY_ENV | {"IMAGEGEN_GATEWAY_URL": "localhost:8000"}, "not an http(s) URL"),
        (["--timeout", "0"], KEY_ENV, "--timeout / IMAGEGEN_GATEWAY_TIMEOUT: not a positive"),
        (["--timeout", "soon"], KEY_ENV, "not a positive number"),
        (["--timeout", "inf"], KEY_ENV, "not a positive number"),
        (["--timeout", "nan"], KEY_ENV, "not a positive number"),
        (["--idempotency-key", ""], KEY_ENV, "--idempotency-key: 1 to 255"),
        (["--idempotency-key", "a\nb"], KEY_ENV, "--idempotency-key: 1 to 255"),
        (["--idempotency-key", "k" * 256], KEY_ENV, "--idempotency-key: 1 to 255"),
    ],
)
def test_bad_settings_exit_2_naming_the_flag_and_variable(
    tmp_path: Path, extra: list[str], env: dict[str, str], message: str
) -> None:
    stderr = io.StringIO()
    args = parse("p", "-o", str(tmp_path / "x.png"), *extra)

    code = command.run(args, environ=env, stderr=stderr, stdout=io.StringIO())

    assert code == 2
    assert stderr.getvalue().startswith("imagegen-gateway generate: ")
    assert message in stderr.getvalue()


def test_out_must_be_a_file_in_an_existing_directory(tmp_path: Path) -> None:
    with pytest.raises(Stop, match="is a directory"):
        resolve_options(parse("p", "-o", str(tmp_path)), KEY_ENV)
    with pytest.raises(Stop, match="does not exist"):
        resolve_options(parse("p", "-o", str(tmp_path / "missing" / "x.png")), KEY_ENV)


def test_a_blank_prompt_is_refused_before_anything_is_sent(tmp_path: Path) -> None:
    with pytest.raises(Stop, match="the prompt is empty"):
        resolve_options(parse("  ", "-o", str(tmp_path / "x.png")), KEY_ENV)


def test_help_documents_the_environment_and_exit_codes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        parse("--help")

    text = capsys.readouterr().out
    for name in ("IMAGEGEN_GATEWAY_URL", "IMAGEGEN_GATEWAY_API_KEY", "IMAGEGEN_GATEWAY_TIMEOUT"):
        assert name in text
    for code in ("0 ", "1 ", "2 ", "3 ", "4 ", "5 ", "130"):
        assert f"\n  {code}" in text
