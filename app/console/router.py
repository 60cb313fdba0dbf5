"""The operator console under /console: installs its pages (sign-in, overview, tasks) and
serves its static files."""

from __future__ import annotations

import logging

from fastapi import APIRouter, FastAPI, Response
from fastapi.responses import FileResponse

from app.console import auth as console_auth
from app.console import overview, references, signin, tasks, usage
from app.console.throttle import LoginThrottle
from app.console.web import PREFIX, STATIC, ConsoleRoute, PageError
from app.core.config import Settings

log = logging.getLogger(__name__)
router = APIRouter(
    prefix=PREFIX,
    route_class=ConsoleRoute,
    include_in_schema=False,
)

_STATIC_FILES = {
    "console.js": "text/javascript",
    "console.css": "text/css",
    "placeholder.svg": "image/svg+xml",
    "favicon.svg": "image/svg+xml",
}


def install(app: FastAPI, settings: Settings) -> None:
    """Serve the console when operators are configured; without them /console is a 404."""
    app.state.console_auth = console_auth.build(settings)
    if app.state.console_auth is None:
        return
    if settings.console_secret is None or not settings.console_secret.get_secret_value():
        log.warning(
            "IMAGEGEN_CONSOLE_SECRET is not set: console sessions are signed with a random key "
            "of this process, so they end when it restarts and no other process accepts them"
        )
    app.state.console_throttle = LoginThrottle()
    app.include_router(router)
    app.include_router(signin.router)
    app.include_router(overview.router)
    app.include_router(tasks.router)
    app.include_router(references.router)
    app.include_router(usage.router)


@router.get("/static/{name}")
async def static(name: str) -> Response:
    """The console's own script, style sheet and placeholder image."""
    media_type = _STATIC_FILES.get(name)
    if media_type is None:
        raise PageError(404, "no such file")
    return FileResponse(STATIC / name, media_type=media_type, headers={"Cache-Control": "no-cache"})
