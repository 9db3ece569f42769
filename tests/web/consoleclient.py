"""A small HTTP client for the console tests: one session's cookies, no redirects followed, CSRF read from forms;
logging a browser page in; a ``linetap-central web`` process of a test's own."""

from __future__ import annotations

import http.client
import os
import re
import selectors
import ssl
import subprocess
import sys
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path

from linetap.sync.central.web.settings import WebSection

# name -> (role, team); every role once, two agents in two teams, an auditor with and one without audio.
USERS = {"root": ("admin", None), "sue": ("supervisor", "red"), "rita": ("reviewer", "red"),
         "ann": ("agent", "red"), "bob": ("agent", "blue"), "audrey": ("auditor", None),
         "aldo": ("auditor", None)}
ROLE_USER = {"admin": "root", "supervisor": "sue", "reviewer": "rita", "agent": "ann", "auditor": "audrey"}


def password_of(name: str) -> str:
    return f"pw-{name}-0123456789"


# The clocked console's [web]: small throttling bounds, so the tests reach them in a few tries.
CLOCKED_WEB = WebSection(login_max_failures=3, login_address_max_failures=6, idle_timeout_s=600)

CSRF = re.compile(r'name="csrf" value="([^"]*)"')
TITLE = re.compile(r"<h1>([^<]*)")


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    cookies: list[str] = field(default_factory=list)  # the Set-Cookie headers

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    @property
    def title(self) -> str:
        found = TITLE.search(self.text)
        return found.group(1).strip() if found else ""

    @property
    def location(self) -> str | None:
        return self.headers.get("location")


class Client:
    """Requests to one console as one browser would make them (cookies kept, redirects not followed)."""

    def __init__(self, base_url: str, *, ca_file: str | None = None) -> None:
        parts = urllib.parse.urlsplit(base_url)
        self.host, self.port = parts.hostname, parts.port
        self.tls = ssl.create_default_context(cafile=ca_file) if parts.scheme == "https" else None
        self.cookies: dict[str, str] = {}
        self._token: str | None = None  # the session's CSRF token, read once per session

    def request(self, method: str, path: str, form: dict[str, str] | list[tuple[str, str]] | None = None,
                headers: dict[str, str] | None = None) -> Answer:
        conn = http.client.HTTPSConnection(self.host, self.port, timeout=30, context=self.tls) if self.tls \
            else http.client.HTTPConnection(self.host, self.port, timeout=30)
        sent = dict(headers or {})
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = None
        if form is not None:
            body = urllib.parse.urlencode(form).encode()
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            conn.request(method, path, body=body, headers=sent)
            response = conn.getresponse()
            data = response.read()
            set_cookies = response.headers.get_all("set-cookie") or []
            answer = Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, data, set_cookies)
        finally:
            conn.close()
        for header in set_cookies:
            for name, morsel in SimpleCookie(header).items():
                if morsel["max-age"] == "0" or not morsel.value:
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.value
        return answer

    def get(self, path: str, **kw) -> Answer:
        return self.request("GET", path, **kw)

    def post(self, path: str, form: dict[str, str] | list[tuple[str, str]], **kw) -> Answer:
        return self.request("POST", path, form, **kw)

    def csrf(self, path: str = "/calls") -> str:
        if self._token is None:
            found = CSRF.search(self.get(path).text)
            assert found, f"no csrf token on {path}"
            self._token = found.group(1)
        return self._token

    def login(self, name: str, password: str, next_path: str = "/calls") -> Answer:
        found = CSRF.search(self.get("/login").text)
        token = found.group(1) if found else ""
        answer = self.post("/login", {"csrf": token, "name": name, "password": password, "next": next_path})
        self._token = None
        return answer


def log_in(page, name: str) -> None:
    """Log a Playwright page in as ``name`` through the login form; returns on the calls page."""
    page.goto("/login")
    page.fill("input[name=name]", name)
    page.fill("input[name=password]", password_of(name))
    page.click("button[type=submit]")
    page.wait_for_url("**/calls*")


class WebProcess:
    """A ``linetap-central web`` process on ``data_dir`` (its central.toml included); its URL."""

    def __init__(self, data_dir: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "linetap.sync.central.cli", "--data-dir", str(data_dir), "web", "--port", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def __enter__(self) -> str:
        selector = selectors.DefaultSelector()
        selector.register(self.process.stdout, selectors.EVENT_READ)
        said = []
        while selector.select(timeout=30) and (line := self.process.stdout.readline()):
            said.append(line)
            if "console listening on " in line:
                threading.Thread(target=lambda: [None for _ in self.process.stdout], name="web-process-log",
                                 daemon=True).start()
                return line.split("console listening on ", 1)[1].strip().rstrip("/")
        self.__exit__()
        raise AssertionError("the console did not start:\n" + "".join(said))

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
