"""`imagegen-gateway generate` as a real process against a real `serve` on the simulator."""

from __future__ import annotations

import hashlib
import itertools
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.client.service import Service, client_env, generate, task_id_in
from tests.support.servers import ROOT, free_port

pytestmark = pytest.mark.e2e

PROGRESS = re.compile(r"^(\w+) +\[[#-]+\] +(\d+)%")
PHASES = ("queued", "pending", "processing", "archiving", "saving")


def test_an_image_is_generated_saved_and_matches_the_service_sha256(
    service: Service, tmp_path: Path
) -> None:
    out = tmp_path / "heron.png"

    result = generate(service, "a heron over a lake", "--size", "3:2", "--out", str(out))

    assert result.returncode == 0, result.stderr
    task = service.task(task_id_in(result.stdout))
    [image] = task["images"]
    content = out.read_bytes()
    assert task["status"] == "succeeded"
    assert hashlib.sha256(content).hexdigest() == image["sha256"]
    assert len(content) == image["bytes"]
    assert content.startswith(b"\x89PNG\r\n\x1a\n")
    assert result.stdout == (
        f"saved {out}: {image['bytes']} bytes (image/png), sha256 {image['sha256']}, "
        f"task {task['id']}\n"
    )
    assert [p.name for p in tmp_path.iterdir()] == ["heron.png"]  # no partial file left

    # Without a terminal: one line per change, each a state the task went through, in order.
    assert "\r" not in result.stderr
    lines = [PROGRESS.match(line) for line in result.stderr.splitlines()]
    shown = [(m.group(1), int(m.group(2))) for m in lines if m is not None]
    assert shown[0] == ("queued", 0)
    assert shown[-1] == ("saving", 100)
    assert all(phase in PHASES for phase, _ in shown)
    assert all(a != b for a, b in itertools.pairwise(shown))
    order = [PHASES.index(phase) for phase, _ in shown]
    assert order == sorted(order)
    assert f"task {task['id']} submitted" in result.stderr


def test_the_same_idempotency_key_follows_the_same_task(service: Service, tmp_path: Path) -> None:
    argv = ["an owl", "--idempotency-key", f"e2e-{tmp_path.name}"]

    first = generate(service, *argv, "--out", str(tmp_path / "1.png"))
    second = generate(service, *argv, "--out", str(tmp_path / "2.png"))

    assert (first.returncode, second.returncode) == (0, 0), first.stderr + second.stderr
    assert task_id_in(first.stdout) == task_id_in(second.stdout)
    assert "already submitted with this Idempotency-Key" in second.stderr
    assert (tmp_path / "1.png").read_bytes() == (tmp_path / "2.png").read_bytes()


def test_a_prompt_the_provider_refuses_exits_1_with_the_task_id(
    service: Service, tmp_path: Path
) -> None:
    out = tmp_path / "x.png"

    result = generate(service, "word " * 2100, "--out", str(out))  # over 2000 tokens

    assert result.returncode == 1, result.stderr
    task_id = task_id_in(result.stderr)
    assert f"task {task_id} failed: submission_rejected: " in result.stderr
    assert "prompt is too long" in result.stderr
    assert f"GET {service.url}/v1/tasks/{task_id}" in result.stderr
    assert service.task(task_id)["status"] == "failed"
    assert not out.exists()


def test_a_wrong_api_key_exits_2_with_the_service_message(service: Service, tmp_path: Path) -> None:
    result = generate(
        service, "p", "--out", str(tmp_path / "x.png"), IMAGEGEN_GATEWAY_API_KEY="wrong-key-0123"
    )

    assert result.returncode == 2
    assert (
        "the service refused the API key (HTTP 401 unauthorized: missing or invalid API key)"
        in (result.stderr)
    )


def test_a_missing_api_key_exits_2(service: Service, tmp_path: Path) -> None:
    result = generate(service, "p", "--out", str(tmp_path / "x.png"), IMAGEGEN_GATEWAY_API_KEY="")

    assert result.returncode == 2
    assert "no API key: pass --api-key or set IMAGEGEN_GATEWAY_API_KEY" in result.stderr


def test_an_unreachable_service_exits_3(service: Service, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"

    result = generate(service, "p", "--out", str(tmp_path / "x.png"), "--url", url)

    assert result.returncode == 3
    assert f"cannot reach the service at {url}" in result.stderr


def sigint_as_at_a_terminal() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_exits_130_naming_the_task(service: Service, tmp_path: Path) -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "app.cli", "generate", "a slow fox", "-o", str(tmp_path / "x.png")],
        env=client_env(service),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C as at a terminal, even when the suite itself runs with SIGINT ignored (a shell
        # starts background jobs so, and Python then keeps ignoring it: the client would never
        # see the signal and would finish the task).
        preexec_fn=sigint_as_at_a_terminal,
    ) as process:
        assert process.stderr is not None
        seen = []
        for line in process.stderr:  # the simulator takes 3 s: the task is still running
            seen.append(line)
            if " submitted" in line:
                process.send_signal(signal.SIGINT)
                break
        rest = process.stderr.read()
        code = process.wait(timeout=30)

    task_id = task_id_in("".join(seen))
    assert code == 130
    assert f"interrupted: task {task_id} goes on in the service" in rest
    assert service.task(task_id)["id"] == task_id
