"""``linetap-central web`` as configured: HTTPS from [web] tls files, Secure cookies and HSTS, client
addresses from a trusted proxy's X-Forwarded-For; loopback by default."""

from __future__ import annotations

from consoleclient import Client, password_of

from linetap.sync.central.cli import main as central_main
from linetap.sync.central.tools import StoreTools
from linetap.sync.central.web.sessions import COOKIE


def test_https_with_secure_cookies_hsts_and_a_trusted_proxy(tls_console) -> None:
    assert tls_console.url.startswith("https://127.0.0.1:")
    client = Client(tls_console.url, ca_file=str(tls_console.ca_file))
    answer = client.login("ann", password_of("ann"), next_path="/calls")
    cookie = next(c for c in answer.cookies if c.startswith(COOKIE + "="))
    assert "Secure" in cookie and "HttpOnly" in cookie
    assert answer.headers["strict-transport-security"].startswith("max-age=")
    client.get("/calls?caller=1", headers={"X-Forwarded-For": "203.0.113.9"})
    with StoreTools(tls_console.data_dir) as tools:
        entries = tools.index.access_log()
    assert entries[-1]["action"] == "search" and entries[-1]["origin"] == "web 203.0.113.9"
    assert entries[-2]["action"] == "login" and entries[-2]["origin"] == "web 127.0.0.1"


def test_users_commands(tmp_path, capsys) -> None:
    def cli(*argv: str) -> int:
        return central_main(["--data-dir", str(tmp_path), *argv])

    assert cli("users", "add", "zed", "--role", "auditor", "--generate") == 0
    shown = capsys.readouterr().out
    assert "password (shown once): " in shown
    assert cli("users", "disable", "zed") == 0 and cli("users", "list", "--json") == 0
    listed = capsys.readouterr().out
    assert '"disabled": true' in listed and "password_hash" not in listed and shown.split()[-1] not in listed
    assert cli("users", "add", "zed", "--role", "agent", "--generate") == 1
    assert "exists already" in capsys.readouterr().err
    assert cli("users", "add", "bad name", "--role", "agent", "--generate") == 1
    assert cli("desks", "assign", "desk-1", "zed") == 1  # an auditor is no agent
    assert "role agent" in capsys.readouterr().err
    assert cli("users", "add", "amy", "--role", "agent", "--generate") == 0
    assert cli("desks", "assign", "desk-1", "amy", "--from", "2026-01-01T08:00") == 0
    assert cli("desks", "list") == 0
    assert "desk-1" in capsys.readouterr().out.splitlines()[-1]
