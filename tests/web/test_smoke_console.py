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


def test_the_filters_offer_only_names_in_the_users_scope(console: str) -> None:
    for name, shown, hidden in (("ann", ["ann"], ["bob"]), ("sue", ["ann"], ["bob", "blue"]),
                                ("root", ["ann", "bob", "blue", "red"], [])):
        client = Client(console)
        client.login(name, password_of(name))
        options = client.get("/calls").text.split('<select name="agent">')[1].split("</label>", 2)
        text = options[0] + options[1]
        assert all(f"<option>{v}</option>" in text for v in shown), name
        assert not any(f"<option>{v}</option>" in text for v in hidden), name


def test_a_saved_filter_with_too_many_fields_is_refused(console: str) -> None:
    client = Client(console)
    client.login("root", password_of("root"))
    answer = client.post("/calls/filters", {"csrf": client.csrf(), "name": "big",
                                            "query": "&".join(f"x{n}=1" for n in range(100))})
    assert answer.status == 400 and answer.title == "Filter not saved"


def test_a_zip_names_the_calls_it_left_out_and_why(console: str, console_store) -> None:
    import io
    import zipfile

    client = Client(console)
    client.login("root", password_of("root"))
    good = f"desk-1/{console_store.calls['desk-1'][0]}"
    damaged = "/".join(console_store.corrupt)
    answer = client.post("/calls/download", [("csrf", client.csrf()), ("format", "ogg"), ("call", good),
                                             ("call", damaged)])
    assert answer.status == 200 and answer.headers["content-type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(answer.body))
    assert sorted(archive.namelist()) == sorted([f"{good}.ogg", f"{good}.manifest.json", "PROBLEMS.txt"])
    assert archive.read(f"{good}.ogg")[:4] == b"OggS"
    assert damaged in archive.read("PROBLEMS.txt").decode() and "altered" in archive.read("PROBLEMS.txt").decode()
    not_visible = client.post("/calls/download", [("csrf", client.csrf()), ("call", "desk-9/nope")])
    assert not_visible.status == 404
