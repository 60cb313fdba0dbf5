"""Tasks with their archived images, reference images and notifications: the one place that
loads and assembles them, for the API, notifications (passed in at wiring time) and the console.

``presentation`` loads what a page of tasks needs in a fixed number of queries (one for the
images, one for the references, one for the notifications) and returns a ``PresentedTask`` per
task; callers see its ``out()`` (``TaskOut``), the console renders its rows (thumbnails, sizes)
directly."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from app.archive import repository as images
from app.archive.models import TaskImage
from app.tasks import notification_repository, reference_repository, service
from app.tasks.models import Task
from app.tasks.notifications import Notification
from app.tasks.references import TaskReference
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


@dataclass(frozen=True, slots=True)
class PresentedTask:
    """A task with its image rows (by index), its reference rows (by position) and its
    notifications (oldest first), or None when they were not loaded (the console's pages do not
    show them)."""

    task: Task
    images: Sequence[TaskImage]
    references: Sequence[TaskReference]
    notifications: Sequence[Notification] | None

    def out(self) -> TaskOut:
        """The task object callers see."""
        if self.notifications is None:
            raise ValueError("presented without its notifications: no caller view")
        images = [image_out(image) for image in self.images]
        return service.present(self.task, images, self.notifications, self.references)


async def presentation(
    session: AsyncSession, tasks: Sequence[Task], *, notifications: bool = True
) -> list[PresentedTask]:
    """The tasks given, in that order, with their images, their references and (unless told
    not to) their notifications: one query for each, for any number of tasks."""
    ids = [task.id for task in tasks]
    archived = await images.for_tasks(session, ids)
    references = await reference_repository.references_of(session, ids)
    notes = await notification_repository.for_tasks(session, ids) if notifications else None
    return [
        PresentedTask(
            task,
            archived[task.id],
            references[task.id],
            notes[task.id] if notes is not None else None,
        )
        for task in tasks
    ]


async def present_tasks(session: AsyncSession, tasks: Sequence[Task]) -> list[TaskOut]:
    """The task objects callers see, in the order given (three queries for any number)."""
    return [presented.out() for presented in await presentation(session, tasks)]
