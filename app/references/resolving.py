"""A create's `reference_images`, checked before anything is saved.

Each reference becomes a `ResolvedReference` (what its `task_references` row will hold), or the
create is refused with `422 validation_error` naming every `reference_images[i]` that failed.
Three queries at most, whatever the number of references: the uploads, the source tasks, their
images. Nothing is written here."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.archive import repository as images
from app.archive.models import TaskImage
from app.core.errors import ApiProblem
from app.tasks.models import Task
from app.tasks.references import ReferenceSource, ResolvedReference
from app.tasks.schemas import ReferenceIn
from app.tasks.states import TaskStatus
from app.uploads.models import Upload

UPLOAD_GRACE = timedelta(seconds=60)
"""An upload that expires sooner than this is refused like an expired one: it could be swept
between the check and the commit (the sweep deletes only uploads expired for minutes)."""

NO_SUCH_UPLOAD = "no such upload (unknown, expired or deleted)"
NO_SUCH_TASK = "no such task"


class Unresolvable(ValueError):
    """Why one reference cannot be used."""


async def resolve(
    session: AsyncSession, *, caller: str, references: Sequence[ReferenceIn], now: datetime
) -> list[ResolvedReference]:
    """The caller's references, checked and described, in the order given; 422 otherwise."""
    if not references:
        return []
    uploads = await _usable_uploads(
        session, caller, {ref.upload_id for ref in references if ref.upload_id}, now
    )
    statuses = await _task_statuses(
        session, caller, {ref.task_id for ref in references if ref.task_id}
    )
    succeeded = [task_id for task_id, status in statuses.items() if status == TaskStatus.SUCCEEDED]
    archived = await images.for_tasks(session, sorted(succeeded))
    resolved: list[ResolvedReference] = []
    problems: list[str] = []
    for position, reference in enumerate(references):
        try:
            resolved.append(_resolve_one(reference, uploads, statuses, archived))
        except Unresolvable as exc:
            problems.append(f"reference_images[{position}]: {exc}")
    if problems:
        raise ApiProblem(422, "validation_error", "; ".join(problems))
    return resolved


def _resolve_one(
    reference: ReferenceIn,
    uploads: dict[str, Upload],
    statuses: dict[str, str],
    archived: dict[str, list[TaskImage]],
) -> ResolvedReference:
    if reference.upload_id is not None:
        upload = uploads.get(reference.upload_id)
        if upload is None:
            raise Unresolvable(NO_SUCH_UPLOAD)
        return ResolvedReference(
            ReferenceSource.UPLOAD,
            upload_id=upload.id,
            key=upload.key,
            content_type=upload.content_type,
            bytes=upload.bytes,
            sha256=upload.sha256,
        )
    if reference.task_id is not None:
        assert reference.index is not None  # ReferenceIn insists
        return _task_image(reference.task_id, reference.index, statuses, archived)
    assert reference.url is not None  # ReferenceIn holds exactly one source
    return ResolvedReference.of_url(reference.url)


def _task_image(
    task_id: str, index: int, statuses: dict[str, str], archived: dict[str, list[TaskImage]]
) -> ResolvedReference:
    status = statuses.get(task_id)
    if status is None:
        raise Unresolvable(NO_SUCH_TASK)
    if status != TaskStatus.SUCCEEDED:
        raise Unresolvable(f"task {task_id} has not succeeded (status {status})")
    found = archived.get(task_id, [])
    image = next((image for image in found if image.index == index), None)
    if image is None:
        raise Unresolvable(f"task {task_id} has no image at index {index}; it has {len(found)}")
    return ResolvedReference(
        ReferenceSource.TASK,
        source_task_id=task_id,
        source_index=index,
        key=image.key,
        content_type=image.content_type,
        bytes=image.bytes,
        sha256=image.sha256,
    )


async def _usable_uploads(
    session: AsyncSession, caller: str, upload_ids: set[str], now: datetime
) -> dict[str, Upload]:
    """The caller's uploads among `upload_ids` that stay usable past the grace, by id.

    On PostgreSQL the rows are held (FOR KEY SHARE) until the create commits: a concurrent
    DELETE /v1/uploads/{id} waits, then finds the upload in use."""
    if not upload_ids:
        return {}
    rows = await session.scalars(
        select(Upload)
        .where(
            Upload.id.in_(sorted(upload_ids)),
            Upload.caller == caller,
            Upload.expires_at > now + UPLOAD_GRACE,
        )
        .with_for_update(read=True, key_share=True)
    )
    return {upload.id: upload for upload in rows}


async def _task_statuses(session: AsyncSession, caller: str, task_ids: set[str]) -> dict[str, str]:
    """The status of each of the caller's tasks among `task_ids`, by id."""
    if not task_ids:
        return {}
    rows = await session.execute(
        select(Task.id, Task.status).where(Task.id.in_(sorted(task_ids)), Task.caller == caller)
    )
    return {row.id: row.status for row in rows}
