"""How a task's reference images reach the provider: the `image_urls` of its submission.

`url` references are sent as the caller gave them. `upload` and `task` references (an object in
the store) are sent per `IMAGEGEN_REFERENCE_DELIVERY`:
- `signed-url`: a URL of this service's `/inputs/` (app/core/input_tokens.py) whose token expires
  24 hours after the task was created, so every retry of the submission sends the same URL;
- `provider-files`: the provider's copy of the object, uploaded to its Files API before the
  create and recorded on the reference row in a transaction of its own, so that a retry (after a
  crash, say) reuses it. A copy older than 48 hours is uploaded again (the provider keeps them
  72 hours).

Before the create, every object is checked to be in the store with the size recorded at create
(`prepare`); one that is not fails the task, as does a Files API refusal. A store or Files API
outage is retried like an unreachable provider."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.input_tokens import extension_of, input_expiry, input_url
from app.provider.files import ProviderFilesClient, ShortStream
from app.provider.types import ProviderRejected, ProviderUnavailable
from app.storage.store import ObjectStore, StoredObject, StoreError
from app.tasks import reference_repository
from app.tasks.models import Task
from app.tasks.references import ReferenceSource, TaskReference

log = logging.getLogger(__name__)

SIGNED_URL: Final = "signed-url"
PROVIDER_FILES: Final = "provider-files"
# A provider file younger than this is sent again as it is; an older one is uploaded anew.
PROVIDER_FILE_REUSE: Final = timedelta(hours=48)


class ReferenceRejected(Exception):
    """A reference cannot be delivered, now or later: the task fails `submission_rejected`."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code


class ReferenceUnavailable(Exception):
    """The store or the Files API failed for now: the submission is retried."""

    def __init__(
        self, message: str, *, status_code: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.retry_after = retry_after


class TaskMovedOn(Exception):
    """The task left `queued` while its references were being prepared: nothing to submit."""


class _Altered(Exception):
    """The object's bytes are not those checked at create."""


def in_store(reference: TaskReference) -> bool:
    """Whether the reference is an object of the store (sources upload and task)."""
    return reference.source != ReferenceSource.URL.value


def reference_name(task: Task, reference: TaskReference) -> str:
    """The reference as the caller named it: `image_urls[i]` or `reference_images[i]` (the
    task's `image_urls` come first in upstream order)."""
    given = len(task.image_urls)
    if reference.source == ReferenceSource.URL.value and reference.position < given:
        return f"image_urls[{reference.position}]"
    return f"reference_images[{max(reference.position - given, 0)}]"


@dataclass(frozen=True, slots=True)
class ReferenceDelivery:
    """Prepares the references of a submission and names their upstream URLs."""

    mode: str  # SIGNED_URL or PROVIDER_FILES
    public_base_url: str
    input_key: bytes
    store: ObjectStore
    files: ProviderFilesClient
    sessions: async_sessionmaker[AsyncSession]

    def needs_preparation(self, references: Sequence[TaskReference]) -> bool:
        """Whether any reference is an object that `prepare` must check (or upload)."""
        return any(in_store(reference) for reference in references)

    async def prepare(
        self, task: Task, references: Sequence[TaskReference], *, now: datetime
    ) -> None:
        """Check every object (signed-url) or make sure the provider has a fresh copy of it
        (provider-files). Raises ReferenceRejected, ReferenceUnavailable or TaskMovedOn."""
        for reference in references:
            if not in_store(reference):
                continue
            if self.mode == PROVIDER_FILES:
                if not self._fresh_provider_file(reference, now):
                    await self._upload(task, reference, now)
            else:
                await self._check(task, reference)

    def upstream_urls(
        self, task: Task, references: Sequence[TaskReference], *, now: datetime
    ) -> tuple[str, ...]:
        """The `image_urls` of the create, in position order; `task.image_urls` for a task made
        before references had rows. Raises ReferenceRejected or ReferenceUnavailable."""
        if not references:
            return tuple(task.image_urls)
        return tuple(self._url(task, reference, now) for reference in references)

    def _url(self, task: Task, reference: TaskReference, now: datetime) -> str:
        if not in_store(reference):
            if reference.url is None:
                raise ReferenceRejected(f"{reference_name(task, reference)} has no URL")
            return reference.url
        if self.mode == PROVIDER_FILES:
            if reference.provider_file_url is None or not self._fresh_provider_file(reference, now):
                raise ReferenceUnavailable(
                    f"{reference_name(task, reference)} has no fresh copy at the provider"
                )
            return reference.provider_file_url
        extension = extension_of(reference.content_type or "")
        if extension is None:
            raise ReferenceRejected(
                f"{reference_name(task, reference)} is of a type the provider does not take: "
                f"{reference.content_type!r}"
            )
        expires_at = input_expiry(task.created_at)
        return input_url(
            self.public_base_url, self.input_key, task.id, reference.position, expires_at, extension
        )

    @staticmethod
    def _fresh_provider_file(reference: TaskReference, now: datetime) -> bool:
        uploaded_at = reference.provider_file_uploaded_at
        return (
            reference.provider_file_url is not None
            and uploaded_at is not None
            and now - uploaded_at < PROVIDER_FILE_REUSE
        )

    async def _check(self, task: Task, reference: TaskReference) -> None:
        """The object is in the store with the size checked at create."""
        try:
            stored = await self.store.head(self._key(task, reference))
        except StoreError as exc:
            raise ReferenceUnavailable(f"the object store is unavailable: {exc}") from exc
        except ValueError as exc:  # a key the store does not take
            raise ReferenceRejected(f"{reference_name(task, reference)}: {exc}") from exc
        self._expect_object(task, reference, stored)

    async def _upload(self, task: Task, reference: TaskReference, now: datetime) -> None:
        """Stream the object to the Files API and record the provider's copy."""
        name = reference_name(task, reference)
        extension = extension_of(reference.content_type or "")
        if extension is None or reference.content_type is None:
            raise ReferenceRejected(
                f"{name} is of a type the provider does not take: {reference.content_type!r}"
            )
        try:
            opened = await self.store.open(self._key(task, reference))
        except StoreError as exc:
            raise ReferenceUnavailable(f"the object store is unavailable: {exc}") from exc
        except ValueError as exc:  # a key the store does not take
            raise ReferenceRejected(f"{name}: {exc}") from exc
        stored = self._expect_object(task, reference, opened[0] if opened else None)
        assert opened is not None
        chunks = _checked(opened[1], reference.sha256)
        file_name = f"{task.id}-{reference.position}.{extension}"
        try:
            uploaded = await self.files.upload(
                chunks, size=stored.size, content_type=reference.content_type, file_name=file_name
            )
        except ProviderRejected as exc:
            status = f"HTTP {exc.status_code}" if exc.status_code else "refused"
            code = f" {exc.code}" if exc.code else ""
            raise ReferenceRejected(
                f"the provider's Files API refused {name} ({status}{code}): {exc.message}",
                status_code=exc.status_code,
            ) from exc
        except ProviderUnavailable as exc:
            status = f"HTTP {exc.status_code}: " if exc.status_code else ""
            raise ReferenceUnavailable(
                f"the provider's Files API is unavailable for {name}: {status}{exc.message}",
                status_code=exc.status_code,
                retry_after=exc.retry_after,
            ) from exc
        except _Altered as exc:
            log.error(
                "reference image in the store does not match its checksum",
                extra={"task_id": task.id, "position": reference.position},
            )
            raise ReferenceRejected(f"{name} in the object store {exc}") from exc
        except (StoreError, ShortStream) as exc:
            raise ReferenceUnavailable(
                f"reading {name} from the object store failed: {exc}"
            ) from exc
        async with self.sessions() as session:
            recorded = await reference_repository.record_provider_file(
                session,
                task.id,
                reference.position,
                file_id=uploaded.id,
                file_url=uploaded.url,
                uploaded_at=now,
            )
            await session.commit()
        if not recorded:
            raise TaskMovedOn
        log.info(
            "reference image uploaded to the provider's Files API",
            extra={"task_id": task.id, "position": reference.position},
        )

    @staticmethod
    def _key(task: Task, reference: TaskReference) -> str:
        if not reference.key:
            raise ReferenceRejected(f"{reference_name(task, reference)} names no stored object")
        return reference.key

    @staticmethod
    def _expect_object(
        task: Task, reference: TaskReference, stored: StoredObject | None
    ) -> StoredObject:
        """`stored`, when it is the object checked at create (present, same size)."""
        name = reference_name(task, reference)
        if stored is None:
            log.error(
                "reference image missing from the object store",
                extra={"task_id": task.id, "position": reference.position},
            )
            raise ReferenceRejected(f"{name} is missing from the object store")
        if reference.bytes is not None and stored.size != reference.bytes:
            log.error(
                "reference image in the object store has another size",
                extra={"task_id": task.id, "position": reference.position},
            )
            raise ReferenceRejected(
                f"{name} in the object store has {stored.size} bytes, not {reference.bytes}"
            )
        return stored


async def _checked(chunks: AsyncIterator[bytes], sha256: str | None) -> AsyncIterator[bytes]:
    """`chunks`, failing before their end when their sha256 is not `sha256` (so the upload is
    cut off unfinished)."""
    digest = hashlib.sha256()
    async for chunk in chunks:
        digest.update(chunk)
        yield chunk
    if sha256 is not None and digest.hexdigest() != sha256:
        raise _Altered("does not match its sha256")
