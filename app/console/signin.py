"""Console sign-in and sign-out: the login form, the key check (throttled), the session cookie."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import RedirectResponse

from app.console import auth as console_auth
from app.console.auth import LOGIN_COOKIE, SESSION_COOKIE, ConsoleAuth
from app.console.signouts import sign_out
from app.console.web import (
    LOGIN_PATH,
    PREFIX,
    ConsoleAuthDep,
    ConsoleRoute,
    LoginThrottleDep,
    OperatorDep,
    render,
    safe_next,
)
from app.core.clock import utcnow
from app.core.deps import SessionDep

log = logging.getLogger(__name__)
router = APIRouter(
    prefix=PREFIX,
    route_class=ConsoleRoute,
    include_in_schema=False,
)


def _login_form(
    request: Request, auth: ConsoleAuth, status_code: int, message: str | None, target: str
) -> Response:
    cookie, token = auth.new_login()
    response = render(
        request, "login.html", status_code, login_csrf=token, message=message, next=target
    )
    response.set_cookie(
        LOGIN_COOKIE,
        cookie,
        max_age=int(console_auth.LOGIN_MAX_AGE.total_seconds()),
        path=LOGIN_PATH,
        secure=auth.secure,
        httponly=True,
        samesite="strict",
    )
    return response


@router.get("/login")
async def login_page(request: Request, auth: ConsoleAuthDep, next: str | None = None) -> Response:
    """The sign-in form."""
    return _login_form(request, auth, 200, None, safe_next(next))


@router.post("/login")
async def login(
    request: Request,
    auth: ConsoleAuthDep,
    throttle: LoginThrottleDep,
    key: Annotated[str, Form(max_length=1024)] = "",
    csrf: Annotated[str, Form(max_length=256)] = "",
    next: Annotated[str, Form(max_length=2048)] = "",
) -> Response:
    """Check an operator key and open a session (unless this address failed too often lately;
    while many addresses do, every attempt is slowed down but a right key still signs in)."""
    # The peer of the connection: behind a proxy, the proxy's address (docs/console.md).
    client = request.client.host if request.client is not None else "unknown"
    wait = throttle.retry_after(client)
    if wait is not None:
        return _throttled(request, wait)
    if not auth.check_login(request.cookies.get(LOGIN_COOKIE), csrf):
        return _login_form(
            request, auth, 403, "The form expired or did not come from this page; try again.", next
        )
    if await throttle.slow_down():
        # Other attempts of this address may have failed during the wait: checked again, with no
        # wait from here to counting this one, so an address never gets more than its limit.
        wait = throttle.retry_after(client)
        if wait is not None:
            return _throttled(request, wait)
    session = auth.login(key) if key else None
    if session is None:
        attacked = throttle.overall_retry_after() is not None
        throttle.failed(client)
        if throttle.retry_after(client) is not None:
            log.warning("console sign-ins throttled", extra={"client": client})
        overall_wait = throttle.overall_retry_after()
        if overall_wait is not None:
            if not attacked:
                log.warning("console sign-ins slowed down: too many failures from all addresses")
            return _slowed(request, auth, overall_wait, throttle.delay, next)
        return _login_form(request, auth, 401, "Wrong key: that is not an operator key.", next)
    response = RedirectResponse(safe_next(next), status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        session,
        max_age=int(auth.max_age.total_seconds()),
        path=PREFIX,
        secure=auth.secure,
        httponly=True,
        samesite="strict",
    )
    response.delete_cookie(LOGIN_COOKIE, path=LOGIN_PATH, secure=auth.secure, httponly=True)
    return response


def _in_minutes(wait: int) -> str:
    minutes = max(1, round(wait / 60))
    return f"{minutes} minute{'s' if minutes > 1 else ''} ({wait} s)"


def _throttled(request: Request, wait: int) -> Response:
    response = render(
        request,
        "error.html",
        429,
        status=429,
        message=(
            "Too many failed sign-ins from this address: the key was not checked. "
            f"Try again in {_in_minutes(wait)}."
        ),
    )
    response.headers["Retry-After"] = str(wait)
    return response


def _slowed(request: Request, auth: ConsoleAuth, wait: int, delay: float, target: str) -> Response:
    """A wrong key while many addresses fail: the form again (a right key still signs in)."""
    message = (
        "Wrong key: that is not an operator key. Many sign-ins failed lately from all addresses "
        f"together: for the next {_in_minutes(wait)} every attempt waits {delay:g} s, and an "
        "operator key still signs in."
    )
    response = _login_form(request, auth, 429, message, target)
    response.headers["Retry-After"] = str(wait)
    return response


@router.post("/logout")
async def logout(operator: OperatorDep, session: SessionDep, auth: ConsoleAuthDep) -> Response:
    """Close the session: its cookie is cleared here and refused everywhere from now on."""
    await sign_out(session, operator, now=utcnow(), max_age=auth.max_age)
    await session.commit()
    response = RedirectResponse(LOGIN_PATH, status_code=303)
    response.delete_cookie(
        SESSION_COOKIE, path=PREFIX, secure=auth.secure, httponly=True, samesite="strict"
    )
    return response
