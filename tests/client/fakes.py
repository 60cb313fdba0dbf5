"""A scripted gateway behind httpx.MockTransport (uploads, creates, tasks, images), and a clock
that sleeps instantly."""

from __future__ import annotations

import argparse
import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from app.cli import build_parser
from app.client import command
from app.tasks.schemas import ErrorOut, ImageOut, TaskOut, UsageOut

TASK_ID = "0b9a3f46-1c2d-4e5f-8a9b-0c1d2e3f4a5b"
API_KEY = "alpha-key-0123456789abcdef"
BASE_URL = "http://gateway.test"
STORE_URL = "https://store.example/signed/image.png?sig=abc"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 300


def task_json(
    status: str,
    progress: int = 0,
    *,
    image: bytes | None = None,
    error: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """A task object as the service presents it."""
    now = datetime(2026, 1, 1, tzinfo=UTC)
    images = []
    if image is not None:
        images.append(
            ImageOut(
                index=0,
                url=f"/v1/tasks/{TASK_ID}/images/0",
                content_type="image/png",
                bytes=len(image),
                sha256=hashlib.sha256(image).hexdigest(),
            )
        )
    task = TaskOut(
        id=TASK_ID,
        status=status,
        progress=progress,
        model="gpt-image-1.5",
        prompt="a heron",
        size="1024x1024",
        quality="high",
        image_urls=[],
        metadata={},
        images=images,
        error=ErrorOut(code=error[0], message=error[1]) if error else None,
        usage=UsageOut(credits=8.1059, source="estimate"),
        created_at=now,
        updated_at=now,
    )
    return task.model_dump(mode="json")


def succeeded(image: bytes = PNG) -> dict[str, Any]:
    return task_json("succeeded", 100, image=image)


Answer = httpx.Response | BaseException


@dataclass
class FakeGateway:
    """Answers POST with `created`, each GET of the task with the next of `states`."""

    states: Sequence[dict[str, Any]]
    created: int = 202
    create_answers: list[Answer] = field(default_factory=list)  # before the normal answer
    upload_answers: list[Answer] = field(default_factory=list)  # before the normal answer
    uploads: dict[str, dict[str, Any]] = field(default_factory=dict)  # by Idempotency-Key
    poll_answers: list[Answer] = field(default_factory=list)  # before the next state
    served: bytes = PNG
    redirect: bool = False
    requests: list[httpx.Request] = field(default_factory=list)
    polls: int = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        if request.method == "POST" and path == "/v1/uploads":
            return self._next(self.upload_answers) or self._upload(request)
        if request.method == "POST" and path == "/v1/images/generations":
            return self._next(self.create_answers) or httpx.Response(
                self.created, json=self.states[0]
            )
        if request.method == "GET" and path == f"/v1/tasks/{TASK_ID}":
            answer = self._next(self.poll_answers)
            if answer is not None:
                return answer
            self.polls += 1
            return httpx.Response(200, json=self.states[min(self.polls, len(self.states) - 1)])
        if request.method == "GET" and path == f"/v1/tasks/{TASK_ID}/images/0":
            if self.redirect:
                return httpx.Response(307, headers={"Location": STORE_URL})
            return httpx.Response(200, content=self.served)
        if request.url == httpx.URL(STORE_URL):
            return httpx.Response(200, content=self.served)
        return httpx.Response(404, json={"error": {"code": "not_found", "message": "no"}})

    def _upload(self, request: httpx.Request) -> httpx.Response:
        """201 with a new upload object, or 200 with the one made earlier under the same key."""
        key = request.headers.get("idempotency-key", "")
        if key in self.uploads:
            return httpx.Response(200, json=self.uploads[key])
        body = request.read()
        upload = {
            "id": f"upl_{len(self.uploads) + 1:024d}",
            "content_type": request.headers["content-type"],
            "bytes": len(body),
            "sha256": hashlib.sha256(body).hexdigest(),
            "width": 64,
            "height": 64,
            "created_at": "2026-01-01T00:00:00Z",
            "expires_at": "2026-01-02T00:00:00Z",
        }
        if key:
            self.uploads[key] = upload
        return httpx.Response(201, json=upload)

    @staticmethod
    def _next(answers: list[Answer]) -> httpx.Response | None:
        if not answers:
            return None
        answer = answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def posts(self) -> list[httpx.Request]:
        """The creates."""
        return [r for r in self.requests if r.url.path == "/v1/images/generations"]

    def upload_posts(self) -> list[httpx.Request]:
        return [r for r in self.requests if r.url.path == "/v1/uploads"]


class FakeTime:
    """A monotonic clock that `sleep` moves forward at once."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["generate", *argv])


def run_client(
    fake: FakeGateway,
    out: Path,
    *extra: str,
    fake_time: FakeTime | None = None,
    tty: bool = False,
    env: dict[str, str] | None = None,
) -> Outcome:
    """`generate "a heron" --out OUT` against `fake`."""
    fake_time = fake_time or FakeTime()
    stdout, stderr = io.StringIO(), io.StringIO()
    args = parse("a heron", "--out", str(out), "--url", BASE_URL, *extra)
    code = command.run(
        args,
        environ={"IMAGEGEN_GATEWAY_API_KEY": API_KEY} if env is None else env,
        stdout=stdout,
        stderr=stderr,
        transport=httpx.MockTransport(fake),
        tty=tty,
        sleep=fake_time.sleep,
        clock=fake_time.clock,
    )
    return Outcome(code, stdout.getvalue(), stderr.getvalue())
