"""On PostgreSQL an upload checked by a create cannot be deleted until that create ends (the
protocol DELETE /v1/uploads/{id} relies on: docs/reference-images.md, "A concurrent delete")."""

from __future__ import annotations

import pytest
from sqlalchemy import delete, text
from sqlalchemy.exc import DBAPIError

from app.core.clock import utcnow
from app.core.config import Settings
from app.references import resolving
from app.tasks.schemas import ReferenceIn
from app.uploads.models import Upload
from tests.conftest import settings_values
from tests.support.gateway import running_gateway
from tests.support.references import add_upload


async def test_a_checked_upload_is_held_until_the_create_ends(pg_database_url: str) -> None:
    async with running_gateway(Settings(**settings_values(pg_database_url))) as gateway:
        upload_id, _ = await add_upload(gateway)
        delete_it = delete(Upload).where(Upload.id == upload_id)
        async with gateway.sessions() as creating, gateway.sessions() as deleting:
            [checked] = await resolving.resolve(
                creating,
                caller="alpha",
                references=[ReferenceIn(upload_id=upload_id)],
                now=utcnow(),
            )
            await deleting.execute(text("SET LOCAL lock_timeout = '100ms'"))
            with pytest.raises(DBAPIError, match="lock timeout"):
                await deleting.execute(delete_it)
            await deleting.rollback()
            await creating.rollback()  # the create ends: the row is free

            deleted = await deleting.execute(delete_it)
            await deleting.commit()

        assert checked.upload_id == upload_id
        assert deleted.rowcount == 1  # type: ignore[attr-defined]
