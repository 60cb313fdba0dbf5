"""A DELETE racing a create that references the upload: the create holds the row
(`lock_usable`), the DELETE waits for it and then sees the reference (409); the object stays."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from sqlalchemy import text

from app.core.clock import utcnow
from app.uploads import repository
from tests.conftest import auth
from tests.support.rows import make_task
from tests.support.waiting import eventually
from tests.uploads.conftest import reference_row, upload_gateway
from tests.uploads.images import png


async def test_a_delete_waits_for_a_create_holding_the_upload(pg_database_url: str) -> None:
    async with upload_gateway(pg_database_url) as uploads:
        stored = await uploads.upload(png())
        upload_id = stored.json()["id"]
        task = await make_task(uploads.gateway.sessions)

        async with uploads.gateway.sessions() as create:  # the create side, mid-transaction
            held = await repository.lock_usable(create, "alpha", upload_id, utcnow())
            assert held is not None
            create.add(reference_row(task.id, held))
            await create.flush()
            deleting = asyncio.create_task(
                uploads.client.delete(f"/v1/uploads/{upload_id}", headers=auth())
            )

            async def waiting_for_a_lock() -> int:
                async with uploads.gateway.sessions() as observer:
                    query = text(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE wait_event_type = 'Lock' AND query LIKE 'DELETE FROM uploads%'"
                    )
                    return int(await observer.scalar(query) or 0)

            await eventually(waiting_for_a_lock, lambda n: n == 1, what="the DELETE blocked")
            assert not deleting.done()
            await create.commit()
        answer = await deleting

        assert (answer.status_code, answer.json()["error"]["code"]) == (409, "upload_in_use")
        assert await uploads.row_count() == 1
        assert await uploads.keys() == [f"uploads/{upload_id}.png"]


async def test_an_expired_upload_cannot_be_held_for_a_create(database_url: str) -> None:
    async with upload_gateway(database_url) as uploads:
        live = (await uploads.upload(png())).json()["id"]
        expired = (await uploads.upload(png((9, 9)))).json()["id"]
        await uploads.set_expiry(expired, utcnow() - timedelta(seconds=1))

        async with uploads.gateway.sessions() as session:
            found = {
                "live": await repository.lock_usable(session, "alpha", live, utcnow()),
                "expired": await repository.lock_usable(session, "alpha", expired, utcnow()),
                "another caller": await repository.lock_usable(session, "beta", live, utcnow()),
            }

    assert {name: row is not None for name, row in found.items()} == {
        "live": True,
        "expired": False,
        "another caller": False,
    }
