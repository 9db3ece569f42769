"""The call page's speech-analytics panel on the real console: a transcript whose words seek the player,
adherence results and the spoken-card-data flag; hidden from an account that may not hear the call."""

from __future__ import annotations

import json

from consoleclient import Client, password_of
from linetap.sync.central.analytics.tables import Results


def _analysed(console_store) -> tuple[str, str]:
    device, rid = "desk-1", console_store.calls["desk-1"][0]
    words = [[400, 700, 95, "Thank"], [700, 900, 97, "you"], [900, 1100, 30, "for"], [1100, 1500, 99, "calling"]]
    with console_store.index() as tools:
        index = tools.index
        with index._sql() as db:  # this call's job, leased to this test as a worker would take it
            db.execute("INSERT INTO analysis_jobs (device_id, recording_id, state, priority, stored_ms, owner, "
                       "lease_until_ms, attempts, updated_ms) VALUES (?, ?, 'running', 0, 0, 'test', ?, 1, 0) "
                       "ON CONFLICT (device_id, recording_id) DO UPDATE SET state = 'running', owner = 'test'",
                       (device, rid, 2 ** 52))
        index.finish_job(device, rid, "test", Results(
            [(device, rid, "near", 0, 400, 1500, "Thank you for calling", json.dumps(words))],
            [(device, rid, "inbound", "greeting", "required", 1, 80, 400, "thank you for calling")],
            [(device, rid, "spoken-card-data", "far", 3000, 6000, "card-number", 0)], "test-engine"), 0)
    return device, rid


def test_the_call_page_shows_the_transcript_adherence_and_card_flag(console: str, console_store) -> None:
    device, rid = _analysed(console_store)
    client = Client(console)
    client.login("root", password_of("root"))
    page = client.get(f"/calls/{device}/{rid}").text
    panel = page[page.index('id="transcript"'):page.index("</section>", page.index('id="transcript"'))]
    assert 'data-seek-ms="1100">calling</button>' in panel and 'class="word unsure" data-seek-ms="900"' in panel
    assert "spoken card data" in panel and "adherence-pass" in panel and "greeting" in panel
    assert page.index('id="transcript"') < page.index("/static/qa.js")  # qa.js binds the words once they exist

    auditor = Client(console)
    auditor.login("aldo", password_of("aldo"))
    hidden = auditor.get(f"/calls/{device}/{rid}").text
    assert "may see this call but not read or hear it" in hidden and "calling</button>" not in hidden


def test_search_finds_the_call_and_links_to_the_moment(console: str, console_store) -> None:
    device, rid = _analysed(console_store)
    client = Client(console)
    client.login("root", password_of("root"))
    page = client.get("/search?q=calling")
    assert page.status == 200 and f'href="/calls/{device}/{rid}#t=1100"' in page.text, page.text[:800]
    assert f"/calls/{device}/{rid}" not in client.get("/search?q=goodbye").text
    bob = Client(console)  # an agent of another desk's calls: that call is not his to search
    bob.login("bob", password_of("bob"))
    assert f"/calls/{device}/{rid}" not in bob.get("/search?q=calling").text
