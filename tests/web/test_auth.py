"""Sessions and logins on a real server whose clock the test holds: fixation, CSRF, throttling, idle
timeout, open redirects, disabled users, security headers, error pages."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from consoleclient import CLOCKED_WEB as WEB
from consoleclient import Client, password_of

from linetap.sync.central.web.sessions import COOKIE, cookie_options, safe_next
from linetap.sync.central.web.settings import WebSection


def logged_in(url: str, name: str) -> Client:
    client = Client(url)
    answer = client.login(name, password_of(name))
    assert answer.status == 303, answer.text[:300]
    return client


@pytest.fixture
def advance_past_window(clocked_console):
    """Move the clock past the throttling window after the test, so its failures count no more."""
    yield
    clocked_console.clock.advance(WEB.login_window_s + 1)


def test_a_login_always_starts_a_new_session_and_the_old_id_is_worthless(clocked_console) -> None:
    client = Client(clocked_console.url)
    client.cookies[COOKIE] = "chosen-by-an-attacker"
    client.login("fixa", password_of("fixa"))
    first = client.cookies[COOKIE]
    assert first != "chosen-by-an-attacker" and len(first) >= 43  # 256 bits, URL-safe base64
    client.login("fixa", password_of("fixa"))  # already logged in: the login page sends it home
    again = Client(clocked_console.url)
    again.cookies[COOKIE] = first
    assert again.get("/calls").status == 200
    fresh = Client(clocked_console.url)
    fresh.cookies[COOKIE] = first  # a browser holding a live id that logs in gets a new one
    fresh.post("/logout", {"csrf": fresh.csrf()})
    fresh.cookies[COOKIE] = first
    assert fresh.get("/calls").location.startswith("/login?next=")
    relog = Client(clocked_console.url)
    relog.cookies[COOKIE] = first
    relog.login("fixa", password_of("fixa"))
    assert relog.cookies.get(COOKIE) != first


def test_a_form_post_needs_its_own_session_token(clocked_console) -> None:
    a, b = logged_in(clocked_console.url, "csrfa"), logged_in(clocked_console.url, "csrfb")
    form = {"name": "mine", "query": "flagged=yes"}
    for token in (None, "", b.csrf(), a.csrf() + "x"):
        answer = a.post("/calls/filters", form if token is None else {**form, "csrf": token})
        assert (answer.status, answer.title) == (403, "Form refused"), token
    assert a.post("/calls/filters", {**form, "csrf": a.csrf()}).status == 303
    anonymous = Client(clocked_console.url)
    answer = anonymous.post("/login", {"name": "csrfa", "password": password_of("csrfa"), "csrf": "guess"})
    assert answer.status == 403 and COOKIE not in anonymous.cookies


def test_failed_logins_of_a_user_are_throttled_until_the_window_passes(clocked_console,
                                                                        advance_past_window) -> None:
    client = Client(clocked_console.url)
    for _ in range(WEB.login_max_failures):
        assert client.login("tess", "wrong password!").status == 401
    refused = client.login("tess", password_of("tess"))  # the right password, too late
    assert refused.status == 429 and "too many failed logins for this user" in refused.text
    clocked_console.clock.advance(WEB.login_window_s + 1)
    assert client.login("tess", password_of("tess")).status == 303


def test_failed_logins_from_an_address_are_throttled_whatever_the_names(clocked_console,
                                                                        advance_past_window) -> None:
    client = Client(clocked_console.url)
    for n in range(WEB.login_address_max_failures + 1):
        answer = client.login(f"nobody-{n}", "wrong password!")
        if answer.status == 429:
            break
    assert answer.status == 429 and "for this address" in answer.text
    assert client.login("addr", password_of("addr")).status == 429
    clocked_console.clock.advance(WEB.login_window_s + 1)
    assert client.login("addr", password_of("addr")).status == 303


def test_an_idle_session_ends(clocked_console) -> None:
    client = logged_in(clocked_console.url, "idle")
    clocked_console.clock.advance(WEB.idle_timeout_s - 10)
    assert client.get("/calls").status == 200  # used: its idle time starts again
    clocked_console.clock.advance(WEB.idle_timeout_s - 10)
    assert client.get("/calls").status == 200
    clocked_console.clock.advance(WEB.idle_timeout_s + 1)
    answer = client.get("/calls?flagged=yes")
    assert answer.status == 303 and answer.location == "/login?next=%2Fcalls%3Fflagged%3Dyes"


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example/", "/\\evil.example",
                                    "javascript:alert(1)", "/%0d%0aSet-Cookie:x=1", "", "/ calls"])
def test_a_login_never_redirects_off_the_site(clocked_console, target: str) -> None:
    client = Client(clocked_console.url)
    answer = client.login("redir", password_of("redir"), next_path=target)
    assert answer.status == 303 and answer.location == safe_next(target)
    assert answer.location.startswith("/") and not answer.location.startswith("//")
    assert client.get("/login?next=" + quote(target, safe="")).location == safe_next(target)
    assert client.get("/login?next=/%0d%0aSet-Cookie:x=1").location == "/calls"  # decoded: a line break


def test_a_local_next_is_followed() -> None:
    assert safe_next("/calls?flagged=yes&page=2") == "/calls?flagged=yes&page=2"
    for bad in ("//x", "/\\x", "http://x", "x", "/a\nb", "/" + "a" * 3000, None):
        assert safe_next(bad) == "/calls"


def test_a_disabled_user_is_logged_out_and_cannot_log_in(clocked_console) -> None:
    from linetap.sync.central.tools import StoreTools
    from linetap.sync.central.web.accounts import set_disabled

    client = logged_in(clocked_console.url, "dis")
    with StoreTools(clocked_console.data_dir) as tools:
        set_disabled(tools.index, "dis", True)
    assert client.get("/calls").location.startswith("/login")
    assert client.login("dis", password_of("dis")).status == 401


def test_every_answer_carries_the_security_headers(clocked_console) -> None:
    client = logged_in(clocked_console.url, "hdr")
    answers = [client.get("/calls"), client.get("/static/console.css"), client.get("/"),
               client.get("/no/such/page"), client.get("/calls/desk-9/nope"), Client(clocked_console.url).get("/calls")]
    for answer in answers:
        csp = answer.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["referrer-policy"] == "same-origin"
    not_found = answers[4]
    assert not_found.status == 404 and "Traceback" not in not_found.text and not_found.title == "Not found"


def test_the_session_cookie_is_httponly_strict_and_secure_with_tls(clocked_console) -> None:
    client = Client(clocked_console.url)
    answer = client.login("hdr", password_of("hdr"))
    cookie = next(c for c in answer.cookies if c.startswith(COOKIE + "="))
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" not in cookie
    assert cookie_options(WebSection(tls_cert_file="c.pem", tls_key_file="k.pem"))["secure"] is True
    assert cookie_options(WebSection(secure_cookies=True))["secure"] is True
