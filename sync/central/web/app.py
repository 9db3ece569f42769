"""The console app: :func:`make_app` gathers each feature module's ``routes()`` behind one guard.

Every route is wrapped by :func:`guarded`, which loads the session from its
cookie (:mod:`~linetap.sync.central.web.sessions`), lets the request through
only when :data:`~linetap.sync.central.web.access.ROUTE_ROLES` allows the
user's role (anonymous: to the login page; a wrong role: 403), checks the
CSRF token of every form post, and turns a known error into a page that says
why. A route missing from the table stops the app from being built. Sync
endpoints run in the worker threads (they read the index and the store);
async ones on the loop.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Awaitable, Callable
from types import ModuleType
from typing import Any
from urllib.parse import quote

from python_multipart.exceptions import MultipartParseError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from linetap.firmware.errors import ConfigError, LinetapError
from linetap.sync.central.web.access import ROUTE_ROLES, NotVisible, allowed
from linetap.sync.central.web.pages import HERE, SecurityHeaders, error_page
from linetap.sync.central.web.sessions import COOKIE, CSRF_FIELD, LOGIN_COOKIE, Session, Sessions, same_token
from linetap.sync.central.web.settings import Settings

logger = logging.getLogger(__name__)

PACKAGE = "linetap.sync.central.web"
# Feature modules, each with routes(); one not installed yet is left out.
FEATURES = ("login", "calls", "callpage", "admin", "evaluations", "dashboards", "auditlog", "media", "fleet",
            "retention", "transcripts")
MAX_BODY = 4 * 1024 * 1024  # a form post (the bulk download's selection is the largest)
MAX_FIELDS = 2000
DENIED = "Not allowed for your role"  # the title of the route table's refusal (a page's own 403s say more)
Endpoint = Callable[[Request], Any]


def feature_modules() -> list[ModuleType]:
    modules = []
    for name in FEATURES:
        try:
            modules.append(importlib.import_module(f"{PACKAGE}.{name}"))
        except ModuleNotFoundError as e:
            if e.name != f"{PACKAGE}.{name}":
                raise
    return modules


def open_stored(settings: Settings) -> Any:
    from linetap.sync.central.store import open_store
    from linetap.sync.central.stored import Stored

    return Stored(settings.data_dir, clock=settings.clock, store=open_store(settings.config, settings.data_dir),
                  index_config=settings.config.index)


def make_app(settings: Settings) -> Starlette:
    """The console on the store ``settings`` names (opened here unless ``settings.stored`` is given)."""
    if settings.stored is None:
        settings.stored = open_stored(settings)
    routes: list[Any] = []
    for module in feature_modules():
        for route in module.routes():
            if route.name not in ROUTE_ROLES:
                raise ConfigError(f"route {route.name} ({route.path}) of {module.__name__} is not in "
                                  "access.ROUTE_ROLES; add it with the roles that may use it")
            routes.append(Route(route.path, guarded(route.name, route.endpoint), methods=route.methods,
                                name=route.name))
    routes.append(Mount("/static", StaticFiles(directory=HERE / "static"), name="static"))
    app = Starlette(routes=routes, middleware=[Middleware(SecurityHeaders, tls=settings.web.tls)],
                    exception_handlers={HTTPException: _http_error, Exception: _server_error},
                    max_body_size=MAX_BODY)
    app.state.settings = settings
    app.state.sessions = Sessions(settings.stored.index, settings.clock, settings.web)
    return app


def guarded(name: str, endpoint: Endpoint) -> Callable[[Request], Awaitable[Response]]:
    """The endpoint behind the session, the route table and the CSRF check."""
    is_async = inspect.iscoroutinefunction(endpoint)

    async def guard(request: Request) -> Response:
        sessions: Sessions = request.app.state.sessions
        session = await run_in_threadpool(sessions.load, request.cookies.get(COOKIE))
        request.state.session = session
        request.state.user = session.user if session else None
        request.state.login_csrf = request.cookies.get(LOGIN_COOKIE, "")
        request.state.form = None
        role = session.user["role"] if session else None
        if not allowed(name, role):
            return _refused(request, session)
        if request.method == "POST":
            problem = await _csrf_problem(request, session)
            if problem is not None:
                return error_page(request, 403, "Form refused", problem)
        try:
            return await endpoint(request) if is_async else await run_in_threadpool(endpoint, request)
        except NotVisible as e:
            return error_page(request, 404, "Not found", str(e))
        except LinetapError as e:
            logger.warning("console request refused route=%s: %s", name, e)
            return error_page(request, 409, "Cannot do that", str(e))

    guard.__name__ = getattr(endpoint, "__name__", name)
    return guard


def _refused(request: Request, session: Session | None) -> Response:
    if session is None:
        if request.method in ("GET", "HEAD"):
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
        return error_page(request, 401, "Log in first", "your session has ended or you never logged in; "
                                                        "log in and try again")
    return error_page(request, 403, DENIED, f"your role ({session.user['role']}) may not use this page; "
                                                   "ask an admin if you need it")


async def _csrf_problem(request: Request, session: Session | None) -> str | None:
    try:
        form = await request.form(max_fields=MAX_FIELDS, max_files=0, max_part_size=64 * 1024)
    except (MultipartParseError, HTTPException, ValueError) as e:
        return f"the form could not be read ({e}); reload the page and send it again"
    request.state.form = form  # for the endpoint (a sync one cannot await it)
    expected = session.csrf if session else request.cookies.get(LOGIN_COOKIE)
    if not same_token(str(form.get(CSRF_FIELD, "")), expected):
        return "the form's security token does not match your session (it expired or came from another " \
               "site); reload the page and send it again"
    return None


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    titles = {404: ("Not found", "there is no such page; use the navigation above"),
              405: ("Not allowed", "this page does not take that kind of request"),
              413: ("Too large", "the request is larger than the console accepts")}
    title, why = titles.get(exc.status_code, ("Request refused", str(exc.detail)))
    return error_page(request, exc.status_code, title, why)


async def _server_error(request: Request, exc: Exception) -> Response:
    logger.error("console error path=%s", request.url.path, exc_info=exc)
    response = error_page(request, 500, "Something went wrong",
                          "the console could not answer; the error is in its log. Try again, and tell an "
                          "admin if it keeps happening")
    for key, value in SecurityHeaders(None).headers:  # outside the middleware: set them here
        response.headers[key.decode()] = value.decode()
    return response
