"""Console users and desks as operations, shared by the ``users``/``desks`` commands and the admin pages.

Every value is checked here (names, roles, teams, devices, times), so the
command line and the browser refuse the same things with the same words.
"""

from __future__ import annotations

from typing import Any

from linetap.firmware.errors import ConfigError
from linetap.sync import wire
from linetap.sync.central.web.access import ROLES, TEAM_NAME, USER_NAME
from linetap.sync.central.web.passwords import generate_password, hash_password


def check_name(name: str) -> str:
    if not USER_NAME.match(name):
        raise ConfigError(f"user name {name[:80]!r} is not 1-64 letters, digits, dots, dashes, underscores or @ "
                          "(starting with a letter or digit)")
    return name


def check_role(role: str) -> str:
    if role not in ROLES:
        raise ConfigError(f"role {role[:40]!r} is not one of {', '.join(ROLES)}")
    return role


def check_team(team: str | None) -> str | None:
    if team in (None, ""):
        return None
    assert team is not None
    if not TEAM_NAME.match(team):
        raise ConfigError(f"team {team[:80]!r} is not 1-64 letters, digits, dots, dashes or underscores")
    return team


def add_user(index: Any, name: str, role: str, team: str | None, password: str | None,
             now_ms: int) -> str | None:
    """Add a user; returns the generated password when none was given (to be shown once)."""
    check_name(name)
    check_role(role)
    generated = None
    if password is None:
        password = generated = generate_password()
    try:
        index.add_user(name, role, check_team(team), hash_password(password), now_ms)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return generated


def set_password(index: Any, name: str, password: str | None) -> str | None:
    """A new password (generated when None, and returned); the user's sessions end."""
    generated = None
    if password is None:
        password = generated = generate_password()
    _must(index.update_user(check_name(name), password_hash=hash_password(password)), name)
    index.drop_sessions(name=name)
    return generated


def set_disabled(index: Any, name: str, disabled: bool) -> None:
    _must(index.update_user(check_name(name), disabled=disabled), name)
    if disabled:
        index.drop_sessions(name=name)


def update(index: Any, name: str, *, role: str | None = None, team: str | None = None,
           audio_granted: bool | None = None) -> None:
    changes: dict[str, Any] = {}
    if role is not None:
        changes["role"] = check_role(role)
    if team is not None:
        changes["team"] = check_team(team)
    if audio_granted is not None:
        changes["audio_granted"] = audio_granted
    if changes:
        _must(index.update_user(check_name(name), **changes), name)
        index.drop_sessions(name=name)  # the new role applies from the next login


def assign_desk(index: Any, device_id: str, agent: str, from_ms: int) -> None:
    try:
        wire.check_device_id(device_id)
    except wire.WireError as e:
        raise ConfigError(f"{e}; use the box's device id") from None
    user = index.user(check_name(agent))
    if user is None or user["role"] != "agent":
        raise ConfigError(f"{agent} is not a console user with the role agent; add one with "
                          f"`linetap-central users add {agent} --role agent`")
    index.assign_desk(device_id, agent, from_ms)


def _must(changed: bool, name: str) -> None:
    if not changed:
        raise ConfigError(f"there is no console user {name}; `linetap-central users list` shows them")
