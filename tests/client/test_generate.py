"""`generate` against a scripted gateway: states shown, image saved and checked, exit codes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest

from app.client.command import OUTAGE_SECONDS
from app.client.options import ExitCode
from tests.client.fakes import (
    API_KEY,
    PNG,
    STORE_URL,
    TASK_ID,
    Answer,
    FakeGateway,
    FakeTime,
    run_client,
    succeeded,
    task_json,
)


def phases(stderr: str) -> list[tuple[str, str]]:
    """(phase, percent) of each progress line."""
    return [
        (line.split()[0], line.split("]")[1].split()[0])
        for line in stderr.splitlines()
        if "[" in line and "%" in line
    ]


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".part"))


def test_success_shows_each_state_once_saves_the_image_and_reports_it(tmp_path: Path) -> None:
    fake = FakeGateway(
        [
            task_json("queued"),
            task_json("pending"),
            task_json("pending"),
            task_json("processing", 40),
            task_json("processing", 40),
            task_json("processing", 80),
            task_json("archiving", 100),
            succeeded(),
        ]
    )
    out = tmp_path / "heron.png"

    result = run_client(fake, out)

    assert result.code == ExitCode.OK
    assert out.read_bytes() == PNG
    shown = phases(result.stderr)
    assert shown[:6] == [
        ("queued", "0%"),
        ("pending", "0%"),
        ("processing", "40%"),
        ("processing", "80%"),
        ("archiving", "100%"),
        ("saving", "0%"),
    ]
    assert shown[-1] == ("saving", "100%")
    assert {phase for phase, _ in shown[6:]} == {"saving"}
    assert f"task {TASK_ID} submitted" in result.stderr
    sha = hashlib.sha256(PNG).hexdigest()
    assert result.stdout == (
        f"saved {out}: {len(PNG)} bytes (image/png), sha256 {sha}, task {TASK_ID}\n"
    )
    assert leftovers(tmp_path) == []
    [post] = fake.posts()
    assert post.headers["authorization"] == f"Bearer {API_KEY}"
    assert post.headers["idempotency-key"].startswith("cli-")
    assert post.read() == b'{"prompt":"a heron"}'


def test_flags_go_into_the_request_and_a_given_idempotency_key_is_sent(tmp_path: Path) -> None:
    fake = FakeGateway([succeeded()], created=200)

    result = run_client(
        fake,
        tmp_path / "x.png",
        "--size",
        "3:2",
        "--quality",
        "low",
        "--image-url",
        "https://example.com/a.png",
        "--image-url",
        "https://example.com/b.png",
        "--idempotency-key",
        "order-7",
    )

    assert result.code == ExitCode.OK
    assert "already submitted with this Idempotency-Key" in result.stderr
    [post] = fake.posts()
    assert post.headers["idempotency-key"] == "order-7"
    assert post.read() == (
        b'{"prompt":"a heron","size":"3:2","quality":"low",'
        b'"image_urls":["https://example.com/a.png","https://example.com/b.png"]}'
    )


def test_on_a_terminal_the_bar_is_redrawn_on_one_line(tmp_path: Path) -> None:
    fake = FakeGateway([task_json("queued"), task_json("processing", 50), succeeded()])

    result = run_client(fake, tmp_path / "x.png", tty=True)

    assert result.code == ExitCode.OK
    assert "\rprocessing [" in result.stderr
    assert result.stderr.endswith("\n")
    assert result.stderr.count("\n") == 2  # the "submitted" message and the end of the bar


@pytest.mark.parametrize(("status", "verb"), [("failed", "failed"), ("cancelled", "was cancelled")])
def test_a_failed_or_cancelled_task_exits_1_with_its_id_code_and_message(
    tmp_path: Path, status: str, verb: str
) -> None:
    final = task_json(status, 10, error=("content_policy_violation", "Rejected by safety."))
    fake = FakeGateway([task_json("queued"), final])
    out = tmp_path / "x.png"

    result = run_client(fake, out)

    assert result.code == 1
    assert f"task {TASK_ID} {verb}: content_policy_violation: Rejected by safety." in result.stderr
    assert f"GET http://gateway.test/v1/tasks/{TASK_ID}" in result.stderr
    assert not out.exists()


def test_a_checksum_mismatch_exits_5_and_leaves_the_old_file(tmp_path: Path) -> None:
    fake = FakeGateway([succeeded()], served=PNG[:-1] + b"x")
    out = tmp_path / "x.png"
    out.write_bytes(b"earlier")

    result = run_client(fake, out)

    assert result.code == 5
    assert hashlib.sha256(PNG).hexdigest() in result.stderr
    assert "nothing was saved" in result.stderr
    assert TASK_ID in result.stderr
    assert out.read_bytes() == b"earlier"
    assert leftovers(tmp_path) == []


def test_a_redirect_to_a_signed_url_is_followed_without_the_api_key(tmp_path: Path) -> None:
    fake = FakeGateway([succeeded()], redirect=True)
    out = tmp_path / "x.png"

    result = run_client(fake, out)

    assert result.code == ExitCode.OK
    assert out.read_bytes() == PNG
    [signed] = [r for r in fake.requests if r.url == httpx.URL(STORE_URL)]
    assert "authorization" not in signed.headers


def test_a_post_whose_answer_was_lost_is_repeated_with_the_same_key(tmp_path: Path) -> None:
    fake = FakeGateway(
        [succeeded()],
        create_answers=[httpx.ReadTimeout("lost"), httpx.Response(503, json={})],
        created=200,
    )

    result = run_client(fake, tmp_path / "x.png")

    assert result.code == ExitCode.OK
    keys = {post.headers["idempotency-key"] for post in fake.posts()}
    assert len(fake.posts()) == 3
    assert len(keys) == 1


@pytest.mark.parametrize(
    ("status", "code", "message", "shown"),
    [
        (401, "unauthorized", "missing or invalid API key", "the service refused the API key"),
        (422, "validation_error", "prompt: too long", "the service refused the request"),
    ],
)
def test_a_refused_key_or_request_exits_2_with_the_service_message(
    tmp_path: Path, status: int, code: str, message: str, shown: str
) -> None:
    answer = httpx.Response(status, json={"error": {"code": code, "message": message}})
    fake = FakeGateway([succeeded()], create_answers=[answer])

    result = run_client(fake, tmp_path / "x.png")

    assert result.code == 2
    assert result.stderr.strip() == f"{shown} (HTTP {status} {code}: {message})"
    assert len(fake.posts()) == 1


def test_an_unreachable_service_exits_3_after_a_few_attempts(tmp_path: Path) -> None:
    refused: list[Answer] = [httpx.ConnectError("Connection refused") for _ in range(3)]
    fake = FakeGateway([succeeded()], create_answers=refused)

    result = run_client(fake, tmp_path / "x.png")

    assert result.code == 3
    assert "cannot reach the service at http://gateway.test" in result.stderr
    assert "Connection refused" in result.stderr
    assert len(fake.posts()) == 3


def test_an_unexpected_error_answer_exits_3_at_once(tmp_path: Path) -> None:
    fake = FakeGateway([succeeded()], create_answers=[httpx.Response(404, text="nothing here")])

    result = run_client(fake, tmp_path / "x.png")

    assert result.code == ExitCode.SERVICE
    assert "HTTP 404: nothing here" in result.stderr
    assert len(fake.posts()) == 1


def test_following_survives_a_short_outage(tmp_path: Path) -> None:
    outage: list[Answer] = [httpx.ConnectError("refused"), httpx.Response(503, json={})]
    fake = FakeGateway([task_json("queued"), succeeded()], poll_answers=outage)

    result = run_client(fake, tmp_path / "x.png")

    assert result.code == ExitCode.OK


def test_following_gives_up_on_a_long_outage_naming_the_task(tmp_path: Path) -> None:
    fake_time = FakeTime()
    outage: list[Answer] = [httpx.ConnectError("refused") for _ in range(500)]
    fake = FakeGateway([task_json("queued"), succeeded()], poll_answers=outage)

    result = run_client(fake, tmp_path / "x.png", fake_time=fake_time)

    assert result.code == ExitCode.SERVICE
    assert f"lost the service while following task {TASK_ID}" in result.stderr
    assert "--idempotency-key cli-" in result.stderr
    assert OUTAGE_SECONDS <= fake_time.now - 1000.0 < OUTAGE_SECONDS + 3


def test_a_task_not_finished_in_time_exits_4_and_tells_how_to_resume(tmp_path: Path) -> None:
    fake_time = FakeTime()
    fake = FakeGateway([task_json("queued"), task_json("processing", 30)])

    result = run_client(
        fake, tmp_path / "x.png", "--timeout", "90", "--idempotency-key", "k1", fake_time=fake_time
    )

    assert result.code == 4
    assert f"gave up after 90 s: task {TASK_ID} is still processing (30%)" in result.stderr
    assert "rerun with --idempotency-key k1" in result.stderr
    assert fake_time.now - 1000.0 == pytest.approx(90.0)
    assert max(fake_time.slept) == 2.0  # polling slows down after a minute
    assert min(fake_time.slept) == 0.5


def test_ctrl_c_while_following_exits_130_with_the_task_id(tmp_path: Path) -> None:
    class Interrupting(FakeTime):
        def sleep(self, seconds: float) -> None:
            raise KeyboardInterrupt

    fake = FakeGateway([task_json("queued")])

    result = run_client(fake, tmp_path / "x.png", fake_time=Interrupting())

    assert result.code == 130
    assert f"interrupted: task {TASK_ID} goes on in the service" in result.stderr
    assert f"GET http://gateway.test/v1/tasks/{TASK_ID}" in result.stderr


def test_ctrl_c_before_the_answer_tells_the_idempotency_key(tmp_path: Path) -> None:
    fake = FakeGateway([succeeded()], create_answers=[KeyboardInterrupt()])

    result = run_client(fake, tmp_path / "x.png", "--idempotency-key", "k2")

    assert result.code == ExitCode.INTERRUPTED
    assert "before the service answered; rerun with --idempotency-key k2" in result.stderr


def test_a_failed_download_is_retried_then_reported(tmp_path: Path) -> None:
    class FlakyImage(FakeGateway):
        def __call__(self, request: httpx.Request) -> httpx.Response:
            if request.url.path.endswith("/images/0"):
                self.requests.append(request)
                return httpx.Response(503, json={"error": {"code": "unavailable", "message": "x"}})
            return super().__call__(request)

    fake = FlakyImage([succeeded()])
    out = tmp_path / "x.png"

    result = run_client(fake, out)

    assert result.code == ExitCode.SERVICE
    assert f"could not download the image of task {TASK_ID}" in result.stderr
    assert len([r for r in fake.requests if r.url.path.endswith("/images/0")]) == 3
    assert not out.exists()
    assert leftovers(tmp_path) == []


def test_ctrl_c_during_the_download_leaves_no_partial_file(tmp_path: Path) -> None:
    class InterruptedImage(FakeGateway):
        def __call__(self, request: httpx.Request) -> httpx.Response:
            if request.url.path.endswith("/images/0"):
                raise KeyboardInterrupt
            return super().__call__(request)

    out = tmp_path / "x.png"

    result = run_client(InterruptedImage([succeeded()]), out)

    assert result.code == 130
    assert f"interrupted: task {TASK_ID}" in result.stderr
    assert list(tmp_path.iterdir()) == []
