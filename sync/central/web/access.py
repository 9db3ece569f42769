"""Who may do what in the console: roles, the one route table, and which recordings a user may see.

:data:`ROUTE_ROLES` names every route of every feature module and the roles
that may use it (``anonymous``: no session). The app refuses to start with a
route missing from it, and ``tests/web/test_routes_roles.py`` requests every
route as every role. :func:`scope_of` says which recordings a user may see;
:func:`visible_recording` is the one way a page or endpoint turns a device
and recording id from a request into an index row: an id the user may not
see is answered exactly as one that does not exist.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from linetap.sync.central.consoleindex import Span

ROLES = ("admin", "supervisor", "reviewer", "agent", "auditor")
ANONYMOUS = "anonymous"
USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
TEAM_NAME = USER_NAME

_ALL = frozenset(ROLES)
_STAFF = frozenset({"admin", "supervisor", "reviewer"})
_ADMIN = frozenset({"admin"})

# route name -> the roles that may use it. Every route of every feature module is here.
ROUTE_ROLES: dict[str, frozenset[str]] = {
    "login": _ALL | {ANONYMOUS},
    "login_post": _ALL | {ANONYMOUS},
    "logout": _ALL,
    "home": _ALL,
    "calls": _ALL,
    "calls_download": _STAFF | {"auditor"},  # an auditor only with audio granted (checked per user)
    "filters_save": _ALL,
    "filters_drop": _ALL,
    "call": _ALL,
    "admin_users": _ADMIN,
    "admin_users_add": _ADMIN,
    "admin_user_update": _ADMIN,
    "admin_desks": _ADMIN,
    "admin_desks_assign": _ADMIN,
    "media_audio": _ALL,  # an auditor only with audio granted (checked per user)
    "media_peaks": _ALL,
    # console-qa (web/evaluations.py, dashboards.py, auditlog.py); the evaluation life cycle
    # (qa/lifecycle.py) then says who may take which step of which evaluation
    "evaluation_submit": _STAFF,
    "evaluation_amend": _STAFF,
    "evaluation_step": _STAFF | {"agent"},
    "evaluation": _ALL,
    "evaluations": _ALL,
    "comment_add": _STAFF | {"agent"},
    "dashboards": _STAFF | {"agent"},
    "dashboards_csv": _STAFF | {"agent"},
    "auditlog": frozenset({"auditor", "admin"}),
    "auditlog_export": frozenset({"auditor", "admin"}),
    "transcript_search": _ALL,  # analytics (web/transcripts.py): only calls the user may hear are searched
    # console-ops (web/fleet.py, retention.py)
    "fleet": _ADMIN | {"supervisor", "auditor"},  # the boxes' state; only admins send commands and config
    "fleet_command": _ADMIN,
    "fleet_config": _ADMIN,
    "retention": _ADMIN | {"auditor"},
    "retention_hold": _ADMIN | {"auditor"},  # legal hold is the compliance officer's too
    "retention_erase": _ADMIN,
}

# The navigation bar: (route name, label), shown to the roles the table lets in.
NAV = (("calls", "Calls"), ("transcript_search", "Search"),
       ("evaluations", "Evaluations"), ("dashboards", "Dashboards"), ("auditlog", "Access log"),
       ("fleet", "Fleet"), ("retention", "Retention"), ("admin_users", "Users"), ("admin_desks", "Desks"))


def allowed(route: str, role: str | None) -> bool:
    return (role or ANONYMOUS) in ROUTE_ROLES.get(route, frozenset())


@dataclass(frozen=True)
class Scope:
    """The recordings a user may see: ``spans`` None is every one; ``audio``: may hear (and download) them."""

    spans: tuple[Span, ...] | None
    audio: bool

    def covers(self, row: dict[str, Any]) -> bool:
        if self.spans is None:
            return True
        started = row.get("started_ms")
        return started is not None and any(
            s.device_id == row["device_id"] and s.from_ms <= started and (s.until_ms is None or started < s.until_ms)
            for s in self.spans)


def agent_spans(assignments: list[dict[str, Any]], agents: set[str]) -> tuple[Span, ...]:
    """The desk spans (from :meth:`desk_assignments`) that belong to any of ``agents``."""
    return tuple(Span(a["device_id"], a["from_ms"], a["until_ms"]) for a in assignments if a["agent"] in agents)


def team_agents(users: list[dict[str, Any]], team: str | None) -> set[str]:
    if team is None:
        return set()
    return {u["name"] for u in users if u["team"] == team and u["role"] == "agent"}


def scope_of(index: Any, user: dict[str, Any]) -> Scope:
    """Agents: their own calls by desk assignment over time; supervisors and reviewers: their team's
    agents'; auditors: every call's metadata and evidence, audio only when granted; admins: all."""
    role = user["role"]
    if role == "admin":
        return Scope(None, True)
    if role == "auditor":
        return Scope(None, bool(user["audio_granted"]))
    if role == "agent":
        return Scope(agent_spans(index.desk_assignments(), {user["name"]}), True)
    if role in ("supervisor", "reviewer"):
        return Scope(agent_spans(index.desk_assignments(), team_agents(index.users(), user["team"])), True)
    return Scope((), False)


def agent_at(assignments: list[dict[str, Any]], device_id: str, started_ms: int | None) -> str | None:
    """The agent whose desk the device was when a call started."""
    if started_ms is None:
        return None
    for a in assignments:
        if a["device_id"] == device_id and a["from_ms"] <= started_ms and (
                a["until_ms"] is None or started_ms < a["until_ms"]):
            return a["agent"]
    return None


class NotVisible(LookupError):
    """No such recording, or not one this user may see (the two are answered alike)."""


def visible_recording(index: Any, scope: Scope, device_id: str, recording_id: str) -> dict[str, Any]:
    """The recording's index row when the scope covers it; :class:`NotVisible` otherwise."""
    if len(device_id) > 200 or len(recording_id) > 200:
        raise NotVisible("no such recording")
    row = index.recording(recording_id, device_id)
    if row is None or not scope.covers(row):
        raise NotVisible(f"no recording {recording_id} of {device_id} that you may see")
    return row
