"""The provider: forged and malformed callbacks, states out of order, malformed API answers.

Callbacks: each case gets its exact answer, and the task row (every table, for refusals that
record nothing) is unchanged or changed only as the case allows. API answers: the provider's
create and query endpoints are mocked at the client boundary (respx) and the submit and poll
jobs run once; the task ends where the case says, and nothing else changed."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import respx
from sqlalchemy import select

from app.callbacks.models import CallbackDelivery
from app.tasks.polling import Poller
from app.tasks.submission import Submitter
from app.workers.models import Job, JobKind, JobState
from app.workers.outcomes import Done, RetryAt
from tests.bad_input.conftest import Seeded, settings
from tests.conftest import auth
from tests.support.callbacks import accepted_task, callback_path, legacy_callback_path
from tests.support.callbacks import body as callback_body
from tests.support.gateway import Gateway, running_gateway

UPSTREAM = "task-unified-1-abcd1234"
OTHER_UPSTREAM = "task-unified-2-other"
PROVIDER = "http://provider.test"
JSON = {"Content-Type": "application/json"}


@pytest.fixture
async def gateway(database_url: str) -> AsyncIterator[Gateway]:
    async with running_gateway(settings(database_url, provider_base_url=PROVIDER)) as gateway:
        yield gateway


async def snapshot(gateway: Gateway) -> dict[str, list[tuple[Any, ...]]]:
    return await Seeded(gateway, gateway.client, {}, {}).snapshot()


async def row(gateway: Gateway, task_id: str) -> tuple[Any, ...]:
    task = await gateway.task_row(task_id)
    return (task.status, task.progress, task.provider_task_id, task.error_code)


async def inbox(gateway: Gateway, task_id: str) -> list[str | None]:
    async with gateway.sessions() as session:
        query = select(CallbackDelivery.outcome).where(CallbackDelivery.task_id == task_id)
        return list((await session.scalars(query)).all())


async def polls_due(gateway: Gateway, task_id: str) -> int:
    jobs = await gateway.jobs(task_id)
    return sum(job.kind == JobKind.POLL and job.state == JobState.QUEUED for job in jobs)


# --- forged callbacks: refused, nothing recorded, nothing changed ----------------------------

FORGED: list[tuple[str, str, int]] = [
    ("no token", "/callbacks/evolink/{victim}", 404),
    ("empty token", "/callbacks/evolink/{victim}/", 401),
    ("random token", "/callbacks/evolink/{victim}/" + "A" * 43, 401),
    ("token of another secret", "{forged}", 401),
    ("another task's token", "/callbacks/evolink/{victim}/{other_token}", 401),
    ("token with a suffix", "{path}x", 401),
    ("token truncated", "{path_truncated}", 401),
    ("extra path segment", "{path}/x", 404),
    ("unknown task", "/callbacks/evolink/00000000-0000-4000-8000-000000000000/{token}", 404),
    ("task id not a UUID", "/callbacks/evolink/not-a-task/{token}", 404),
    ("task id upper case", "/callbacks/evolink/{victim_upper}/{token}", 404),
    # With the nonce in the path, every forgery is refused from the path alone (a 401 even for a
    # task that does not exist: no token can be right for it).
    ("random token with the nonce", "/callbacks/evolink/{victim}/{nonce}/" + "A" * 43, 401),
    (
        "another task's nonce and token",
        "/callbacks/evolink/{victim}/{other_nonce}/{other_token}",
        401,
    ),
    ("another task's nonce", "/callbacks/evolink/{victim}/{other_nonce}/{token}", 401),
    ("empty nonce", "/callbacks/evolink/{victim}//{token}", 401),
    (
        "unknown task with a nonce",
        "/callbacks/evolink/00000000-0000-4000-8000-000000000000/{nonce}/{token}",
        401,
    ),
    ("task id upper case with the nonce", "/callbacks/evolink/{victim_upper}/{nonce}/{token}", 404),
    ("token of another secret, older path", "{legacy_forged}", 401),
]


@pytest.mark.parametrize(("case", "template", "status"), FORGED, ids=[c[0] for c in FORGED])
async def test_a_forged_callback_is_refused_and_changes_nothing(
    gateway: Gateway, case: str, template: str, status: int
) -> None:
    victim = await accepted_task(gateway.sessions, UPSTREAM)
    other = await accepted_task(gateway.sessions, OTHER_UPSTREAM)
    path = callback_path(victim)
    before = await snapshot(gateway)
    target = template.format(
        victim=victim.id,
        victim_upper=victim.id.upper(),
        token=path.rsplit("/", 1)[1],
        other_token=callback_path(other).rsplit("/", 1)[1],
        forged=callback_path(victim, secret="another-secret-0123456789abcdefghijklmn"),
        legacy_forged=legacy_callback_path(
            victim, secret="another-secret-0123456789abcdefghijklmn"
        ),
        nonce=victim.callback_nonce,
        other_nonce=other.callback_nonce,
        path=path,
        path_truncated=path[:-1],
    )

    response = await gateway.client.post(
        target, content=callback_body(UPSTREAM, "completed"), headers=JSON
    )

    assert response.status_code == status, case
    assert response.json()["error"]["code"] in ("unauthorized", "not_found")
    assert await snapshot(gateway) == before


async def test_a_get_on_a_callback_url_changes_nothing(gateway: Gateway) -> None:
    task = await accepted_task(gateway.sessions, UPSTREAM)
    before = await snapshot(gateway)

    response = await gateway.client.get(callback_path(task))

    assert response.status_code in (404, 405)
    assert await snapshot(gateway) == before


@pytest.mark.parametrize(
    "upstream_id",
    [
        OTHER_UPSTREAM,
        "task-unified-9-elsewhere",
        "task-unified-1-abcd1234 ",
        "TASK-UNIFIED-1-ABCD1234",
    ],
    ids=["our other task", "unknown upstream task", "trailing space", "upper case"],
)
async def test_a_valid_token_with_a_body_about_another_task_is_400(
    gateway: Gateway, upstream_id: str
) -> None:
    victim = await accepted_task(gateway.sessions, UPSTREAM)
    await accepted_task(gateway.sessions, OTHER_UPSTREAM)
    before = await row(gateway, victim.id)

    response = await gateway.client.post(
        callback_path(victim), content=callback_body(upstream_id, "completed"), headers=JSON
    )

    if upstream_id.strip() == UPSTREAM:  # the provider's id, stripped: the same task
        assert response.status_code == 200
        return
    assert response.status_code == 400
    assert await inbox(gateway, victim.id) == ["mismatch"]
    assert await row(gateway, victim.id) == before
    assert await polls_due(gateway, victim.id) == 0


# --- malformed callbacks ---------------------------------------------------------------------


def doc(**fields: Any) -> bytes:
    """A callback body about UPSTREAM with exactly these fields besides the id."""
    return json.dumps({"id": UPSTREAM} | fields).encode()


def raw(status: str, tail: bytes) -> bytes:
    """A body about UPSTREAM with `tail` (JSON or not quite) after the status."""
    return b'{"id": "%s", "status": "%s", ' % (UPSTREAM.encode(), status.encode()) + tail


DEEP = b"[" * 100_000 + b"]" * 100_000
NUL_ID = b'{"id": "%s\\u0000", "status": "completed"}' % UPSTREAM.encode()
LONG_ID = json.dumps({"id": "t" * 129, "status": "completed"}).encode()
M, A, P = "malformed", "applied", ("pending", 0)  # P: the task as it was (accepted, pending)
# (case, body, status, inbox outcome, (status, progress) of the task afterwards, poll due now)
MALFORMED: list[tuple[str, bytes, int, str, tuple[str, int], bool]] = [
    ("not JSON", b"{not json", 400, M, P, False),
    ("empty", b"", 400, M, P, False),
    ("array", b"[1, 2]", 400, M, P, False),
    ("null", b"null", 400, M, P, False),
    ("not UTF-8", b"\xff\xfe\x00", 400, M, P, False),
    ("nested 100000 deep", raw("processing", b'"x": ' + DEEP + b"}"), 400, M, P, False),
    ("id missing", b'{"status": "completed"}', 400, M, P, False),
    ("id a number", b'{"id": 7, "status": "completed"}', 400, M, P, False),
    ("id empty", b'{"id": "", "status": "completed"}', 400, M, P, False),
    ("id 129 chars", LONG_ID, 400, M, P, False),
    ("id with NUL", NUL_ID, 400, M, P, False),
    ("status missing", doc(progress=10), 200, A, P, False),
    ("status unknown", doc(status="teleporting", progress=70), 200, A, P, False),
    ("status a number", doc(status=3, progress=70), 200, A, P, False),
    ("status an object", doc(status={"s": "completed"}), 200, A, P, False),
    ("status NUL", doc(status="\x00"), 200, A, P, False),
    ("status lone surrogate", doc(status="\ud800"), 200, A, P, False),
    ("progress 150", doc(status="processing", progress=150), 200, A, ("processing", 100), False),
    ("progress -5", doc(status="processing", progress=-5), 200, A, ("processing", 0), False),
    ("progress a word", doc(status="processing", progress="x"), 200, A, ("processing", 0), False),
    ("progress NaN", raw("processing", b'"progress": NaN}'), 200, A, ("processing", 0), False),
    ("progress 1e400", raw("processing", b'"progress": 1e400}'), 200, A, ("processing", 0), False),
    ("results not a list", doc(status="completed", results="https://x/y.png"), 200, A, P, True),
    ("error not an object", doc(status="failed", error="boom"), 200, A, P, True),
]


@pytest.mark.parametrize(
    ("case", "content", "status", "outcome", "after", "poll"),
    MALFORMED,
    ids=[c[0] for c in MALFORMED],
)
async def test_a_malformed_callback_gets_its_answer_and_changes_only_what_it_may(
    gateway: Gateway,
    case: str,
    content: bytes,
    status: int,
    outcome: str,
    after: tuple[str, int],
    poll: bool,
) -> None:
    task = await accepted_task(gateway.sessions, UPSTREAM)

    response = await gateway.client.post(callback_path(task), content=content, headers=JSON)

    assert response.status_code == status, response.text
    assert await inbox(gateway, task.id) == [outcome]
    assert await row(gateway, task.id) == (*after, UPSTREAM, None)
    # a final status only brings the confirming poll forward; nothing else is trusted
    assert await polls_due(gateway, task.id) == int(poll)


@pytest.mark.parametrize(
    ("case", "content_type"),
    [("text/plain", "text/plain"), ("form", "application/x-www-form-urlencoded"), ("none", None)],
)
async def test_the_content_type_of_a_callback_does_not_matter(
    gateway: Gateway, case: str, content_type: str | None
) -> None:
    task = await accepted_task(gateway.sessions, UPSTREAM)
    headers = {"Content-Type": content_type} if content_type else {}

    response = await gateway.client.post(
        callback_path(task), content=callback_body(UPSTREAM, "processing", 40), headers=headers
    )

    assert response.status_code == 200, case
    assert await row(gateway, task.id) == ("processing", 40, UPSTREAM, None)


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "streamed"])
async def test_a_callback_over_one_mebibyte_is_413_and_records_nothing(
    gateway: Gateway, declared: bool
) -> None:
    task = await accepted_task(gateway.sessions, UPSTREAM)
    huge = callback_body(UPSTREAM, "processing", 40)[:-1] + b" " * (1024 * 1024) + b"}"
    before = await snapshot(gateway)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(huge), 65536):
            yield huge[start : start + 65536]

    response = await gateway.client.post(
        callback_path(task), content=huge if declared else chunks(), headers=JSON
    )

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert await snapshot(gateway) == before


# --- states out of order, stale after final, duplicates ----------------------------------------
# (terminal tasks absorbing every status, stale progress after a final claim, duplicates,
# concurrent duplicates: tests/callbacks/test_endpoint.py; the state machine: tests/tasks)

AA = ["applied", "applied"]
SEQUENCES: list[tuple[str, list[tuple[str, int]], tuple[str, int], list[str]]] = [
    ("progress backwards", [("processing", 60), ("processing", 30)], ("processing", 60), AA),
    ("pending after processing", [("processing", 50), ("pending", 0)], ("processing", 50), AA),
    ("processing after a final claim", [("completed", 100), ("processing", 70)], P, AA),
    ("a second final claim", [("completed", 100), ("failed", 0)], P, AA),
    ("failed, then completed", [("failed", 0), ("completed", 100)], P, AA),
    ("a duplicate", [("processing", 20), ("processing", 20)], ("processing", 20), ["applied"]),
]


@pytest.mark.parametrize(
    ("case", "sequence", "after", "outcomes"), SEQUENCES, ids=[c[0] for c in SEQUENCES]
)
async def test_states_out_of_order_never_move_a_task_back(
    gateway: Gateway,
    case: str,
    sequence: list[tuple[str, int]],
    after: tuple[str, int],
    outcomes: list[str],
) -> None:
    task = await accepted_task(gateway.sessions, UPSTREAM)

    answers = [
        await gateway.client.post(
            callback_path(task), content=callback_body(UPSTREAM, status, progress), headers=JSON
        )
        for status, progress in sequence
    ]

    assert [answer.status_code for answer in answers] == [200] * len(sequence), case
    assert await row(gateway, task.id) == (*after, UPSTREAM, None)
    assert sorted(await inbox(gateway, task.id)) == outcomes  # type: ignore[type-var]


# --- the provider's API answering nonsense -----------------------------------------------------


def answer(status: int, content: bytes | str, **headers: str) -> httpx.Response:
    data = content.encode() if isinstance(content, str) else content
    return httpx.Response(status, content=data, headers=headers)


U, R = ("queued", "uncertain", None), ("queued", "retry", None)
REJECTED = ("failed", "rejected", "submission_rejected")
# (case, create answer, job outcome, (status, submit_state, error_code) of the task afterwards)
CREATES: list[tuple[str, httpx.Response, type, tuple[str, str, str | None]]] = [
    ("200 not JSON", answer(200, "<html>ok</html>"), RetryAt, U),
    ("200 empty", answer(200, ""), RetryAt, U),
    ("200 array", answer(200, "[]"), RetryAt, U),
    ("200 without id", answer(200, '{"status": "pending"}'), RetryAt, U),
    (
        "200 id not upstream's",
        answer(200, '{"id": "../../admin", "status": "pending"}'),
        RetryAt,
        U,
    ),
    ("200 id with NUL", answer(200, '{"id": "task-unified-1\\u0000"}'), RetryAt, U),
    ("400 HTML", answer(400, "<html>bad</html>"), Done, REJECTED),
    (
        "400 message NUL",
        answer(400, '{"error": {"code": 400, "message": "b\\u0000"}}'),
        Done,
        REJECTED,
    ),
    ("400 error an array", answer(400, '{"error": [1]}'), Done, REJECTED),
    ("500 not JSON", answer(500, "oops"), RetryAt, R),
    ("429 Retry-After garbage", answer(429, "{}", **{"Retry-After": "soon"}), RetryAt, R),
    ("429 Retry-After a year", answer(429, "{}", **{"Retry-After": "31536000"}), RetryAt, R),
    ("504", answer(504, "gateway timeout"), RetryAt, U),
    ("302 redirect", answer(302, "", Location="http://127.0.0.1/"), RetryAt, R),
]


@pytest.mark.parametrize(("case", "reply", "kind", "after"), CREATES, ids=[c[0] for c in CREATES])
async def test_a_malformed_create_answer_ends_the_task_where_it_should(
    gateway: Gateway,
    case: str,
    reply: httpx.Response,
    kind: type,
    after: tuple[str, str, str | None],
) -> None:
    created = await gateway.client.post(
        "/v1/images/generations", json={"prompt": "p"}, headers=auth()
    )
    task_id = created.json()["id"]
    submitter = Submitter(gateway.app.state.runtime.tasks)

    with respx.mock(base_url=PROVIDER) as upstream:
        upstream.post("/v1/images/generations").mock(return_value=reply)
        outcome = await submitter(Job(kind=JobKind.SUBMIT, task_id=task_id, attempts=1))

    task = await gateway.task_row(task_id)
    assert isinstance(outcome, kind), (case, outcome)
    assert (task.status, task.submit_state, task.error_code) == after
    assert task.provider_task_id is None  # nothing unusable is adopted as an upstream id
    if task.error_message is not None:
        assert "\x00" not in task.error_message


def query(**fields: Any) -> httpx.Response:
    """A 200 query answer about UPSTREAM with these fields."""
    return answer(200, json.dumps({"id": UPSTREAM} | fields))


NUL_ERROR = {"code": "x\x00", "message": "m\x00"}
QP, QF = ("pending", 0, None), ("failed", 0)
# (case, query answer, (status, progress, error_code) of the task afterwards)
QUERIES: list[tuple[str, httpx.Response, tuple[str, int, str | None]]] = [
    ("200 not JSON", answer(200, "<html/>"), QP),
    ("200 array", answer(200, "[]"), QP),
    ("200 about another task", query(id=OTHER_UPSTREAM, status="completed", results=["u"]), QP),
    ("200 status unknown", query(status="teleporting"), QP),
    ("200 progress a word", query(status="processing", progress="x"), ("processing", 0, None)),
    ("200 failed, code an integer", query(status="failed", error={"code": 500}), (*QF, "500")),
    ("200 failed, NUL in the error", query(status="failed", error=NUL_ERROR), (*QF, "x\ufffd")),
    ("200 failed without error", query(status="failed"), (*QF, "unknown_error")),
    ("200 completed without results", query(status="completed"), (*QF, "archive_failed")),
    ("404", answer(404, '{"error": {"code": "not_found"}}'), QP),
    ("500", answer(500, "oops"), QP),
]


@pytest.mark.parametrize(("case", "reply", "after"), QUERIES, ids=[c[0] for c in QUERIES])
async def test_a_malformed_query_answer_changes_the_task_only_as_it_should(
    gateway: Gateway, case: str, reply: httpx.Response, after: tuple[str, int, str | None]
) -> None:
    task = await accepted_task(gateway.sessions, UPSTREAM)
    poller = Poller(gateway.app.state.runtime.tasks)

    with respx.mock(base_url=PROVIDER) as upstream:
        upstream.get(f"/v1/tasks/{UPSTREAM}").mock(return_value=reply)
        outcome = await poller(Job(kind=JobKind.POLL, task_id=task.id, attempts=1))

    row_after = await gateway.task_row(task.id)
    assert (row_after.status, row_after.progress, row_after.error_code) == after, case
    assert isinstance(outcome, Done if after[0] in ("failed", "archiving") else RetryAt)
    assert "\x00" not in (row_after.error_message or "")
