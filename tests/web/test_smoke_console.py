"""The console starts on a store filled by the real ingest, and a login lands on the calls page."""

from __future__ import annotations

from consoleclient import ROLE_USER, Client, password_of


def test_each_role_logs_in_and_sees_the_calls_page(console: str) -> None:
    for role, name in ROLE_USER.items():
        client = Client(console)
        answer = client.login(name, password_of(name))
        assert (answer.status, answer.location) == (303, "/calls"), (role, answer.status, answer.text[:300])
        page = client.get("/calls")
        assert page.status == 200 and page.title.startswith("Calls"), role


def test_a_call_page_shows_the_evidence_panel_and_the_player(console: str, console_store) -> None:
    client = Client(console)
    client.login("root", password_of("root"))
    device, rid = "desk-1", console_store.calls["desk-1"][0]
    page = client.get(f"/calls/{device}/{rid}")
    assert page.status == 200, page.text[:500]
    assert 'id="evidence"' in page.text and 'id="player"' in page.text
    evidence = page.text[page.text.index('id="evidence"'):page.text.index('id="markers"')]
    assert evidence.count("badge ok") >= 3, evidence  # signature, chain, receipt hold
