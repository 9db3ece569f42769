"""The console starts on a store filled by the real ingest, and a login lands on the calls page."""

from __future__ import annotations

from client import Client
from conftest import ROLE_USER, password_of


def test_each_role_logs_in_and_sees_the_calls_page(console: str) -> None:
    for role, name in ROLE_USER.items():
        client = Client(console)
        answer = client.login(name, password_of(name))
        assert (answer.status, answer.location) == (303, "/calls"), (role, answer.status, answer.text[:300])
        page = client.get("/calls")
        assert page.status == 200 and page.title.startswith("Calls"), role
