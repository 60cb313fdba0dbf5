"""Command line options map onto the simulator configuration."""

from __future__ import annotations

import argparse
from typing import Any

import pytest
import uvicorn

from app.provider.simulator import Simulator, SimulatorConfig, SimulatorFaults, cli


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(argv)


def test_defaults_match_the_dataclasses() -> None:
    ns = parse()
    assert (ns.host, ns.port) == ("127.0.0.1", 8900)
    assert cli.config_from_args(ns) == SimulatorConfig()


def test_every_option() -> None:
    ns = parse(
        "--host=192.0.2.1",
        "--port=9999",
        "--api-key=sk-evo-a",
        "--api-key=sk-evo-b",
        "--duration=0.5",
        "--allow-private-callbacks",
        "--seed=7",
        "--image-format=webp",
        "--image-noise",
        "--image-pixels=64x48",
        "--callback-drop-rate=0.3",
        "--callback-duplicates=3",
        "--stale-after-final",
        "--create-429-rate=0.1",
        "--create-500-rate=0.2",
        "--create-hang-rate=0.05",
        "--create-hang-seconds=30",
        "--query-500-rate=0.4",
        "--fail-rate=0.25",
        "--link-ttl=60",
        "--down",
        "--no-fetch-references",
        "--reference-timeout=2.5",
        "--max-image-bytes=4096",
        "--files-ttl=90",
        "--files-quota=3",
        "--files-429-rate=0.15",
        "--files-error-rate=0.35",
        "--credits=12.5",
        "--unlimited-credits",
    )
    assert (ns.host, ns.port) == ("192.0.2.1", 9999)
    assert cli.config_from_args(ns) == SimulatorConfig(
        api_keys=("sk-evo-a", "sk-evo-b"),
        duration_seconds=0.5,
        allow_private_callbacks=True,
        image_format="webp",
        image_noise=1.0,
        image_pixels=(64, 48),
        seed=7,
        fetch_references=False,
        reference_timeout_seconds=2.5,
        max_image_bytes=4096,
        files_ttl_seconds=90,
        files_quota=3,
        credits=12.5,
        unlimited_credits=True,
        faults=SimulatorFaults(
            callback_drop_rate=0.3,
            callback_duplicates=3,
            stale_after_final=True,
            create_429_rate=0.1,
            create_500_rate=0.2,
            create_hang_rate=0.05,
            create_hang_seconds=30,
            query_500_rate=0.4,
            fail_rate=0.25,
            link_ttl_seconds=60,
            down=True,
            files_429_rate=0.15,
            files_error_rate=0.35,
        ),
    )


def test_out_of_range_values_are_refused() -> None:
    with pytest.raises(ValueError, match="callback_drop_rate"):
        cli.config_from_args(parse("--callback-drop-rate=3"))
    with pytest.raises(SystemExit):
        cli.main(["--fail-rate=-1"])
    with pytest.raises(ValueError, match="image_noise"):
        cli.config_from_args(parse("--image-noise=1.5"))
    with pytest.raises(ValueError, match="files_error_rate"):
        cli.config_from_args(parse("--files-error-rate=2"))
    with pytest.raises(ValueError, match="files_quota"):
        cli.config_from_args(parse("--files-quota=-1"))
    with pytest.raises(ValueError, match="max_image_bytes"):
        cli.config_from_args(parse("--max-image-bytes=0"))
    for bad in ("-1", "nan", "inf"):
        with pytest.raises(ValueError, match="credits"):
            cli.config_from_args(parse(f"--credits={bad}"))


def test_image_pixels_must_be_a_size_within_bounds() -> None:
    for bad in ("64", "64x", "x64", "64y64", "-1x5", "axb"):
        with pytest.raises(SystemExit):
            parse(f"--image-pixels={bad}")
    for bad in ("0x64", "64x0", "4097x1"):
        with pytest.raises(ValueError, match="image_pixels"):
            cli.config_from_args(parse(f"--image-pixels={bad}"))


def test_image_noise_takes_a_fraction() -> None:
    assert cli.config_from_args(parse()).image_noise == 0.0
    assert cli.config_from_args(parse("--image-noise", "0.667")).image_noise == 0.667


def test_run_serves_the_simulator_app(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []

    def fake_run(app: Any, **kwargs: Any) -> None:
        calls.append({"app": app, **kwargs})

    monkeypatch.setattr(uvicorn, "run", fake_run)
    cli.run(parse("--port=8911", "--root-path=/sim"))
    (call,) = calls
    assert (call["host"], call["port"], call["root_path"]) == ("127.0.0.1", 8911, "/sim")
    assert call["app"].title == Simulator(SimulatorConfig()).app.title
