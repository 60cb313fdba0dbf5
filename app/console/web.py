"""The console's web plumbing: templates, security headers, errors as pages, operator checks."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

from fastapi import Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from jinja2 import Environment, PackageLoader, StrictUndefined

from app.console.auth import SESSION_COOKIE, ConsoleAuth, Operator
from app.console.signouts import is_signed_out
from app.console.throttle import LoginThrottle
from app.core.body_cap import capped_receive
from app.core.deps import SessionDep
from app.core.errors import BodyTooLarge

PREFIX = "/console"
STATIC = Path(__file__).parent / "static"
LOGIN_PATH = f"{PREFIX}/login"
# Console forms are a few fields (the sign-in form is the largest, about 3 KiB): a larger body
# is refused with 413 as it arrives, before Starlette parses it (its own limits allow ~1 GB).
CONSOLE_MAX_BODY_BYTES = 16 * 1024
TOO_LARGE = f"the form is over {CONSOLE_MAX_BODY_BYTES} bytes: nothing was done"
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self'; script-src 'self'; style-src 'self'; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}
_SAFE_METHODS = ("GET", "HEAD")


def _when(value: datetime | None) -> str:
    """A UTC time as `2026-12-04 10:31:07 UTC`, or a dash."""
    if value is None:
        return "-"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _iso(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).isoformat()


def _credits(value: float) -> str:
    """Credits with up to four decimals, thousands grouped: `99,416.4429`, `12.5`."""
    return f"{value:,.4f}".rstrip("0").rstrip(".")


templates = Environment(
    loader=PackageLoader("app.console", "templates"),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
templates.filters["when"] = _when
templates.filters["iso"] = _iso
templates.filters["credits"] = _credits


class Redirect(Exception):
    """Answer with a 303 to `location`."""

    def __init__(self, location: str) -> None:
        super().__init__(location)
        self.location = location


class PageError(Exception):
    """Answer with an error page."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """A page from a template, with the signed-in operator's name and CSRF token."""
    operator: Operator | None = getattr(request.state, "operator", None)
    auth = console_auth(request)
    context.setdefault("operator", operator)
    context.setdefault("csrf", auth.csrf_token(operator) if operator else "")
    context.setdefault("flash", None)
    context.setdefault("nav", "")
    html = templates.get_template(template).render(**context)
    return HTMLResponse(html, status_code=status_code)


def error_page(request: Request, status_code: int, message: str) -> HTMLResponse:
    """A page that says what went wrong."""
    return render(request, "error.html", status_code, message=message, status=status_code)


class ConsoleRoute(APIRoute):
    """Every console answer gets the security headers; refusals and bad input become pages.
    The body (a small form) is read whole within CONSOLE_MAX_BODY_BYTES before the handler."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def answer(request: Request) -> Response:
            try:
                capped = Request(
                    request.scope,
                    capped_receive(request.scope, request.receive, CONSOLE_MAX_BODY_BYTES),
                )
                await capped.body()  # kept on the request: the form is parsed from it
                response = await handler(capped)
            except BodyTooLarge:
                response = error_page(request, 413, TOO_LARGE)
            except Redirect as exc:
                response = RedirectResponse(exc.location, status_code=303)
            except PageError as exc:
                response = error_page(request, exc.status_code, exc.message)
            except RequestValidationError:
                response = error_page(request, 404, "no such page")
            for name, value in SECURITY_HEADERS.items():
                response.headers.setdefault(name, value)
            response.headers.setdefault("Cache-Control", "no-store")
            return response

        return answer


def console_auth(request: Request) -> ConsoleAuth:
    """The app's console authenticator."""
    auth: ConsoleAuth = request.app.state.console_auth
    return auth


async def get_console_auth(request: Request) -> ConsoleAuth:
    """`console_auth` as a dependency (async: a plain `def` would run in the thread pool)."""
    return console_auth(request)


ConsoleAuthDep = Annotated[ConsoleAuth, Depends(get_console_auth)]


async def login_throttle(request: Request) -> LoginThrottle:
    """The app's limit on failed sign-ins."""
    throttle: LoginThrottle = request.app.state.console_throttle
    return throttle


LoginThrottleDep = Annotated[LoginThrottle, Depends(login_throttle)]


def safe_next(target: str | None) -> str:
    """A local console path to go to after signing in; anything else goes to the overview."""
    if not target or len(target) > 2048 or not target.isprintable() or "\\" in target:
        return PREFIX
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith(PREFIX):
        return PREFIX
    if target.startswith(LOGIN_PATH) or target.startswith("//"):
        return PREFIX
    return target


async def require_operator(request: Request, session: SessionDep) -> Operator:
    """The signed-in operator. Without a session (or with one signed out) a page read goes to
    the login form and anything else is refused; a state change must carry the session's CSRF
    token."""
    auth = console_auth(request)
    operator = auth.operator(request.cookies.get(SESSION_COOKIE))
    if operator is not None and await is_signed_out(session, operator):
        operator = None
    if operator is None:
        if request.method in _SAFE_METHODS:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            raise Redirect(f"{LOGIN_PATH}?next={quote(safe_next(target), safe='')}")
        raise PageError(403, "sign in first: this action needs an operator session")
    if request.method not in _SAFE_METHODS:
        form = await request.form()
        if not auth.check_csrf(operator, form.get("csrf")):
            raise PageError(403, "missing or invalid CSRF token: reload the page and try again")
    request.state.operator = operator
    return operator


OperatorDep = Annotated[Operator, Depends(require_operator)]
