"""Login and logout: a new session at every login, throttled failures, redirects only to local paths."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from linetap.sync.central.web.access import USER_NAME
from linetap.sync.central.web.audit import audit
from linetap.sync.central.web.pages import page
from linetap.sync.central.web.passwords import MAX_LENGTH, verify_password
from linetap.sync.central.web.sessions import (COOKIE, HOME, LOGIN_COOKIE, Sessions, cookie_options, new_token,
                                              safe_next)


def routes() -> list[Route]:
    return [Route("/", home, name="home"),
            Route("/login", login_form, name="login"),
            Route("/login", login, methods=["POST"], name="login_post"),
            Route("/logout", logout, methods=["POST"], name="logout")]


def home(request: Request) -> Response:
    return RedirectResponse(HOME, status_code=303)


def login_form(request: Request) -> Response:
    target = safe_next(request.query_params.get("next"))
    if request.state.user is not None:
        return RedirectResponse(target, status_code=303)
    return _form(request, target)


def _form(request: Request, target: str, error: str | None = None, status: int = 200) -> Response:
    token = request.cookies.get(LOGIN_COOKIE) or new_token()
    request.state.login_csrf = token
    response = page(request, "login.html", {"next": target, "error": error}, status_code=status)
    settings = request.app.state.settings
    response.set_cookie(LOGIN_COOKIE, token, **cookie_options(settings.web))
    return response


def login(request: Request) -> Response:
    form = request.state.form  # parsed and bounded by the guard's CSRF check
    name, password = str(form.get("name", ""))[:100], str(form.get("password", ""))[:MAX_LENGTH + 1]
    target = safe_next(str(form.get("next", "")))
    sessions: Sessions = request.app.state.sessions
    address = request.client.host if request.client else "unknown"
    why = sessions.throttled(name, address)
    if why is not None:
        return _form(request, target, why, status=429)
    user = request.app.state.settings.stored.index.user(name) if USER_NAME.match(name) else None
    good = verify_password(user["password_hash"] if user else None, password)
    if not good or user is None or user["disabled"]:
        sessions.failed(name, address)
        audit(request, "login-failed", who=name if USER_NAME.match(name) else "(not a user name)",
              detail="disabled" if good and user and user["disabled"] else "wrong name or password")
        return _form(request, target, "wrong name or password (or the user is disabled)", status=401)
    sessions.succeeded(name)
    old = request.state.session
    if old is not None:
        sessions.end(old)
    cookie = sessions.start(name)
    audit(request, "login", who=name)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(COOKIE, cookie, **cookie_options(request.app.state.settings.web))
    response.delete_cookie(LOGIN_COOKIE, path="/")
    return response


def logout(request: Request) -> Response:
    request.app.state.sessions.end(request.state.session)
    audit(request, "logout")
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response
