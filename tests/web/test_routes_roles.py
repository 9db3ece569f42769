"""Every route of the console requested as every role and anonymously: the route table decides, nothing else.

The routes are those of the app as built (every feature module installed), so
a route added without a row in ``access.ROUTE_ROLES`` fails here (and stops
the app from being built). Allowed means the request got past the table: any
answer but the table's refusal (anonymous: to the login page or 401; a role:
403 "Not allowed for your role") and never a server error. Posts carry the
session's CSRF token and a form the page refuses or that changes nothing, so
the table is tested without side effects.
"""

from __future__ import annotations

import re
from urllib.parse import quote

import pytest
from consoleclient import ROLE_USER, Client, password_of
from starlette.routing import Route

from linetap.sync.central.web.access import ANONYMOUS, ROLES, ROUTE_ROLES
from linetap.sync.central.web.app import DENIED, feature_modules

# Forms that are refused by the page itself or change nothing: the table is what is tested.
HARMLESS = {
    "login_post": {"name": "", "password": ""},
    "calls_download": {},
    "filters_save": {"name": "not a name!", "query": ""},
    "filters_drop": {"name": "no-such-filter"},
    "admin_users_add": {"name": "", "role": "nobody"},
    "admin_user_update": {"action": "no-such-action"},
    "admin_desks_assign": {"device": "", "agent": ""},
}


def all_routes() -> list[Route]:
    return [route for module in feature_modules() for route in module.routes()]


def test_every_route_of_every_module_is_in_the_table() -> None:
    missing = [f"{r.name} ({r.path})" for r in all_routes() if r.name not in ROUTE_ROLES]
    assert not missing, f"routes missing from access.ROUTE_ROLES: {missing}"


@pytest.fixture(scope="module")
def clients(console: str) -> dict[str, Client]:
    out = {ANONYMOUS: Client(console)}
    for role, name in ROLE_USER.items():
        out[role] = Client(console)
        assert out[role].login(name, password_of(name)).status == 303
    return out


def path_of(route: Route, console_store) -> str:
    values = {"device_id": "desk-1", "recording_id": console_store.calls["desk-1"][0], "name": "probe-user"}
    return re.sub(r"\{(\w+)(:\w+)?\}", lambda m: quote(values.get(m.group(1), "x"), safe=""), route.path)


@pytest.mark.parametrize("role", [*ROLES, ANONYMOUS])
def test_each_route_answers_each_role_as_the_table_says(role: str, clients, console: str, console_store) -> None:
    wrong = []
    for route in all_routes():
        if route.name == "logout":
            continue  # ends the session: its own test below
        client = clients[role]
        path = path_of(route, console_store)
        if "GET" in route.methods:
            answer = client.get(path)
        else:
            token = client.csrf("/login" if role == ANONYMOUS else "/calls")
            answer = client.post(path, {"csrf": token, **HARMLESS.get(route.name, {})})
        allowed = role in ROUTE_ROLES[route.name]
        if answer.status >= 500 or refused(answer, role) == allowed:
            wrong.append(f"{route.name} {path}: {answer.status} {answer.title!r} (table: "
                         f"{'allowed' if allowed else 'denied'})")
    assert not wrong, "\n".join(wrong)


def refused(answer, role: str) -> bool:
    if role == ANONYMOUS:
        return answer.status == 401 or (answer.status == 303 and answer.location.startswith("/login?next="))
    return answer.status == 403 and answer.title == DENIED


@pytest.mark.parametrize("role", [*ROLES, ANONYMOUS])
def test_logout_as_each_role(role: str, console: str) -> None:
    client = Client(console)
    if role != ANONYMOUS:
        client.login(ROLE_USER[role], password_of(ROLE_USER[role]))
    token = client.csrf("/login" if role == ANONYMOUS else "/calls")
    answer = client.post("/logout", {"csrf": token})
    assert refused(answer, role) == (role not in ROUTE_ROLES["logout"])
    if role != ANONYMOUS:
        assert answer.location == "/login"
        assert client.get("/calls").location.startswith("/login?next=")  # the session is gone
