"""Rendering: the Jinja2 templates (autoescaped), the security headers every response carries, error pages.

Every page extends ``templates/base.html``. :func:`page` renders one with the
user, the CSRF token of the session, the navigation the user's role may use
and the flash message; :func:`error_page` renders a status with a plain
reason and never a stack trace.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from linetap.sync.central.qa.stats import call_figures
from linetap.sync.central.web.access import NAV, allowed

HERE = Path(__file__).parent
TEMPLATES = Jinja2Templates(directory=HERE / "templates")
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; media-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
HEADERS = (
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
)
HSTS = (b"strict-transport-security", b"max-age=31536000")


def iso(ms: int | None) -> str:
    if ms is None:
        return "?"
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def seconds(ms: int | None) -> str:
    if ms is None:
        return "?"
    total = round(ms / 1000)
    return f"{total // 60}:{total % 60:02d}"


def qa_summary(metrics: Any) -> list[str]:
    """A call's QA metrics as a reviewer reads them (the manifest carries them as decimal strings, read by
    the dashboards' :func:`~linetap.sync.central.qa.stats.call_figures`); figures that make no sense are left out."""
    figures = call_figures({"metrics": metrics})
    shown = [("agent talks {:.0%}", figures["talk_ratio"]), ("silence {:.0%}", figures["silence_share"]),
             ("over-talk {:.0%}", figures["overtalk_share"]), ("hold {:.0f} s", figures["hold_s"] or None)]
    return [text.format(value) for text, value in shown if value is not None]


TEMPLATES.env.filters["iso"] = iso
TEMPLATES.env.filters["mmss"] = seconds
TEMPLATES.env.filters["qa_summary"] = qa_summary


def nav_for(request: Request, role: str | None) -> list[tuple[str, str]]:
    names = {getattr(r, "name", None) for r in request.app.routes}
    return [(request.url_for(name).path, label) for name, label in NAV if name in names and allowed(name, role)]


def page(request: Request, name: str, context: dict[str, Any] | None = None, status_code: int = 200) -> Response:
    user = getattr(request.state, "user", None)
    session = getattr(request.state, "session", None)
    base = {"user": user, "csrf": session.csrf if session else getattr(request.state, "login_csrf", ""),
            "nav": nav_for(request, user["role"] if user else None), "flash": request.query_params.get("flash")}
    response = TEMPLATES.TemplateResponse(request, name, {**base, **(context or {})}, status_code=status_code)
    response.headers["cache-control"] = "no-store"
    return response


def error_page(request: Request, status: int, title: str, why: str) -> Response:
    """A page that says what went wrong and what to do; never a stack trace."""
    try:
        return page(request, "error.html", {"title": title, "why": why}, status_code=status)
    except Exception:  # the error page itself failed (a template missing): plain text still says why
        return Response(f"{title}: {why}\n", status_code=status, media_type="text/plain")


class SecurityHeaders:
    """ASGI middleware: the security headers on every response (pages, assets, errors, redirects)."""

    def __init__(self, app: ASGIApp, *, tls: bool = False) -> None:
        self.app = app
        self.headers = HEADERS + ((HSTS,) if tls else ())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [
                    h for h in self.headers if h[0] not in present]
            await send(message)

        await self.app(scope, receive, send_with_headers)
