"""The admin pages: users (add, role, team, audio for auditors, disable, new password) and desk assignments."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from linetap.sync.central.web.access import ROLES
from linetap.sync.central.web.accounts import add_user, assign_desk, set_disabled, set_password, update
from linetap.sync.central.web.audit import audit
from linetap.sync.central.web.callquery import when_ms
from linetap.sync.central.web.pages import error_page, page


def routes() -> list[Route]:
    return [Route("/admin/users", users, name="admin_users"),
            Route("/admin/users", users_add, methods=["POST"], name="admin_users_add"),
            Route("/admin/users/{name}", user_update, methods=["POST"], name="admin_user_update"),
            Route("/admin/desks", desks, name="admin_desks"),
            Route("/admin/desks", desks_assign, methods=["POST"], name="admin_desks_assign")]


def _index(request: Request):
    return request.app.state.settings.stored.index


def _now_ms(request: Request) -> int:
    return round(request.app.state.settings.clock.wall() * 1000)


def users(request: Request, shown_password: str | None = None, for_user: str | None = None) -> Response:
    return page(request, "admin_users.html", {"users": _index(request).users(), "roles": ROLES,
                                              "shown_password": shown_password, "for_user": for_user})


def users_add(request: Request) -> Response:
    form = request.state.form
    name = str(form.get("name", ""))[:100]
    generated = add_user(_index(request), name, str(form.get("role", "")), str(form.get("team", "")) or None,
                         None, _now_ms(request))
    audit(request, "user", detail=f"added {name} as {form.get('role')}")
    return users(request, generated, name)


def user_update(request: Request) -> Response:
    form, name = request.state.form, request.path_params["name"][:100]
    action = str(form.get("action", ""))
    index = _index(request)
    if action == "disable" or action == "enable":
        if name == request.state.user["name"]:
            return error_page(request, 400, "Not done", "you cannot disable your own account")
        set_disabled(index, name, action == "disable")
    elif action == "password":
        generated = set_password(index, name, None)
        audit(request, "user", detail=f"new password for {name}")
        return users(request, generated, name)
    elif action == "update":
        update(index, name, role=str(form.get("role", "")) or None, team=str(form.get("team", "")),
               audio_granted=form.get("audio") == "on")
    else:
        return error_page(request, 400, "Not done", "unknown action; use the buttons of the users page")
    audit(request, "user", detail=f"{action} {name}")
    return RedirectResponse("/admin/users", status_code=303)


def desks(request: Request) -> Response:
    index = _index(request)
    agents = [u["name"] for u in index.users() if u["role"] == "agent"]
    return page(request, "admin_desks.html", {"assignments": index.desk_assignments(), "agents": agents,
                                              "devices": [d["device_id"] for d in index.devices()]})


def desks_assign(request: Request) -> Response:
    form = request.state.form
    when = str(form.get("from", "")).strip()
    from_ms = _now_ms(request) if not when else when_ms(when[:40])
    if from_ms is None:
        return error_page(request, 400, "Not assigned", f"{when[:40]!r} is not an ISO date-time "
                                                        "(2026-01-31T09:00); leave it empty for now")
    device, agent = str(form.get("device", ""))[:100], str(form.get("agent", ""))[:100]
    assign_desk(_index(request), device, agent, from_ms)
    audit(request, "desk", device_id=device, detail=f"to {agent} from {from_ms}")
    return RedirectResponse("/admin/desks", status_code=303)
