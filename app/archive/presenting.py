"""Tasks as callers see them, with their archived images and their latest notification: the
one presenter of the API, of notifications (passed in at wiring time) and of the console."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from app.archive import repository as images
from app.archive.models import TaskImage
from app.tasks import notification_repository, service
from app.tasks.models import Task
from app.tasks.schemas import ImageOut, TaskOut


def image_out(image: TaskImage) -> ImageOut:
    """An archived image as callers see it, with the URL that serves it."""
    return ImageOut(
        index=image.index,
        url=f"/v1/tasks/{image.task_id}/images/{image.index}",
        content_type=image.content_type,
        bytes=image.bytes,
        sha256=image.sha256,
    )


async def present_tasks(session: AsyncSession, tasks: Sequence[Task]) -> list[TaskOut]:
    """The task objects callers see, in the order given (two queries for any number)."""
    ids = [task.id for task in tasks]
    archived = await images.for_tasks(session, ids)
    notes = await notification_repository.for_tasks(session, ids)
    return [
        service.present(task, [image_out(image) for image in archived[task.id]], notes[task.id])
        for task in tasks
    ]
