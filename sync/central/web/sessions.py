"""Console sessions, kept server-side in the index; login throttling; where a login may send the browser.

The cookie holds a random 256-bit id; the index keeps only its SHA-256
(``console_sessions``), with the user, the CSRF token of every form of the
session and when it was last used. A login always starts a new session
(the id a browser had before is never promoted: no fixation); a session unused
for ``[web] idle_timeout_s`` ends; logout, a password change and disabling a
user end it too. Failed logins are counted per user name and per client
address over ``login_window_s``; past ``login_max_failures`` (per name) or
``login_address_max_failures`` (per address) further tries are refused
before the password is even checked.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from linetap.firmware.clock import Clock
from linetap.sync.central.web.settings import WebSection

COOKIE = "linetap_session"
LOGIN_COOKIE = "linetap_login"  # the login form's CSRF token before there is a session (double submit)
CSRF_FIELD = "csrf"
TOUCH_EVERY_MS = 15_000  # a session's last-use time is written at most this often
HOME = "/calls"
MAX_NEXT = 2000


def new_token() -> str:
    """A random 256-bit token, URL-safe."""
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def same_token(a: str | None, b: str | None) -> bool:
    return bool(a) and bool(b) and hmac.compare_digest(str(a), str(b))


def safe_next(target: str | None) -> str:
    """``target`` when it is a path on this site (``/calls?x=1``), else the home page: no open redirect."""
    if not target or len(target) > MAX_NEXT or not target.startswith("/") or target.startswith(("//", "/\\")):
        return HOME
    if any(ord(c) < 0x21 or c in "\\" for c in target):
        return HOME
    return target


def cookie_options(web: WebSection) -> dict[str, Any]:
    return {"httponly": True, "samesite": "strict", "secure": web.tls or web.secure_cookies, "path": "/"}


@dataclass(frozen=True)
class Session:
    id_sha256: str
    user: dict[str, Any]
    csrf: str


class Sessions:
    """Sessions and throttling on the index, by the injected clock."""

    def __init__(self, index: Any, clock: Clock, web: WebSection) -> None:
        self.index, self.clock, self.web = index, clock, web

    def now_ms(self) -> int:
        return round(self.clock.wall() * 1000)

    def load(self, cookie: str | None) -> Session | None:
        """The live session of that cookie; None (and the session ended) when idle too long or its user
        is gone or disabled."""
        if not cookie or len(cookie) > 100:
            return None
        key = token_hash(cookie)
        row = self.index.session(key)
        if row is None:
            return None
        now = self.now_ms()
        user = self.index.user(row["name"])
        if now - row["seen_ms"] > self.web.idle_timeout_s * 1000 or user is None or user["disabled"]:
            self.index.drop_session(key)
            return None
        if now - row["seen_ms"] >= TOUCH_EVERY_MS:
            self.index.touch_session(key, now)
        return Session(key, user, row["csrf"])

    def start(self, name: str) -> str:
        """A new session for the user; returns the cookie's id (shown to nobody else, stored hashed)."""
        cookie = new_token()
        now = self.now_ms()
        self.index.drop_sessions(seen_before_ms=now - self.web.idle_timeout_s * 1000)
        self.index.add_session(token_hash(cookie), name, new_token(), now)
        return cookie

    def end(self, session: Session) -> None:
        self.index.drop_session(session.id_sha256)

    def throttled(self, name: str, address: str) -> str | None:
        """Why a login try must be refused now (too many failures), else None."""
        since = self.now_ms() - self.web.login_window_s * 1000
        for kind, who, limit in (("user", name, self.web.login_max_failures),
                                 ("address", address, self.web.login_address_max_failures)):
            failures = self.index.failures(kind, who, since)
            if len(failures) >= limit:
                wait_s = max(1, (failures[0] - since) // 1000)
                return (f"too many failed logins for this {'user' if kind == 'user' else 'address'}; "
                        f"try again in {wait_s} s, or ask an admin")
        return None

    def failed(self, name: str, address: str) -> None:
        """Count a failure against both; failures older than the window go (the table stays small)."""
        now = self.now_ms()
        for kind, who in (("user", name), ("address", address)):
            self.index.clear_failures(kind, before_ms=now - self.web.login_window_s * 1000)
            self.index.add_failure(kind, who, now)

    def succeeded(self, name: str) -> None:
        self.index.clear_failures("user", name)
        self.index.clear_failures("address", before_ms=self.now_ms() - self.web.login_window_s * 1000)
