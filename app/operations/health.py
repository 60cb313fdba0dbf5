"""Liveness and readiness."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from functools import cache

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from app.archive.serving import StoreDep
from app.core.deps import SessionsDep, SettingsDep
from app.core.migrate import alembic_config
from app.storage.store import StoreError

log = logging.getLogger(__name__)

router = APIRouter(tags=["operations"])

CHECK_SECONDS = 5.0  # a hung database or store answers "not ready" well within a probe's timeout


@cache
def head_revisions(database_url: str) -> frozenset[str]:
    """The newest migration(s) this build ships."""
    from alembic.script import ScriptDirectory  # imported on first use: it is slow and chatty

    return frozenset(ScriptDirectory.from_config(alembic_config(database_url)).get_heads())


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "The failing part is named."}})
async def readyz(settings: SettingsDep, sessions: SessionsDep, store: StoreDep) -> JSONResponse:
    """Ready: the database answers with the schema at head, and the store accepts writes."""
    database_url = settings.database_url
    revisions: frozenset[str] | None = None
    try:
        async with asyncio.timeout(CHECK_SECONDS), sessions() as session:
            await session.execute(text("SELECT 1"))
            with contextlib.suppress(DBAPIError):  # no version table: never migrated
                current = await session.scalars(text("SELECT version_num FROM alembic_version"))
                revisions = frozenset(current.all())
    except Exception:
        log.warning("not ready: database unreachable", exc_info=True)
        return _unready("database", "unreachable")
    if revisions is None:
        return _unready("database", "no schema; run `imagegen-gateway migrate`")
    if revisions != head_revisions(database_url):
        return _unready("database", "schema is not at head; run `imagegen-gateway migrate`")
    try:
        async with asyncio.timeout(CHECK_SECONDS):
            await store.check_writable()
    except (StoreError, TimeoutError) as exc:
        log.warning("not ready: store not writable", extra={"error": str(exc)})
        return _unready("store", "not writable")
    return JSONResponse({"status": "ready"})


def _unready(part: str, reason: str) -> JSONResponse:
    return JSONResponse(
        {"status": "unavailable", "failing": part, "reason": reason}, status_code=503
    )
