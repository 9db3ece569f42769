"""The console in Debian's Chromium (Playwright), on a real ``web`` process over a store filled by real ingest.

Each role logs in and sees the calls its scope allows (desk-1 was ann's, then
bob's: hot-desking), searches, opens a call, downloads a zip; an agent cannot
open another agent's call by its URL; an erased and a damaged recording say
why; the admin pages add a user and assign a desk; every action is in the
access log. Screenshots of each page go to tests/web/screenshots/.
"""

from __future__ import annotations

import io
import json
import zipfile

from pathlib import Path

import pytest

from linetap.sync.central.accesslog import verify_log
from linetap.sync.central.tools import StoreTools

SCREENSHOTS = Path(__file__).parent / "screenshots"  # made by the browser fixture
# Calls each user sees (erased ones are not listed): desk-1's first two are ann's, the rest bob's.
VISIBLE = {"admin": 5, "supervisor": 2, "reviewer": 2, "agent": 2, "auditor": 5, "bob": 3}


def log_since(store, pos: int) -> list[dict]:
    with StoreTools(store.data_dir) as tools:
        return [e for e in tools.index.access_log() if e["pos"] >= pos]


def log_end(store) -> int:
    with StoreTools(store.data_dir) as tools:
        entries = tools.index.access_log()
        assert verify_log(entries) is None
        return len(entries)


@pytest.mark.parametrize("who", list(VISIBLE))
def test_each_role_logs_in_and_sees_the_calls_of_its_scope(login_page, who: str, console_store) -> None:
    start = log_end(console_store)
    page = login_page(who)
    assert page.locator("a.call-link").count() == VISIBLE[who]
    page.screenshot(path=SCREENSHOTS / f"calls-{who}.png", full_page=True)
    actions = [(e["action"], e["origin"]) for e in log_since(console_store, start)]
    assert ("login", "web 127.0.0.1") in actions and ("search", "web 127.0.0.1") in actions


def test_search_by_caller_and_save_the_filter(login_page, console_store) -> None:
    start = log_end(console_store)
    page = login_page("admin")
    page.fill("input[name=caller]", "9001")
    page.click("form#filters button[type=submit]")
    page.wait_for_url("**/calls?*caller=9001*")
    assert page.locator("a.call-link").count() == 1
    assert "Blue Caller" in page.locator("table.calls").inner_text()
    page.fill("input[placeholder='name this search']", "blue-caller")
    with page.expect_navigation():
        page.click("form[action='/calls/filters'] button")
    assert page.locator(".saved a", has_text="blue-caller").count() == 1
    page.screenshot(path=SCREENSHOTS / "calls-search.png", full_page=True)
    searches = [e for e in log_since(console_store, start) if e["action"] == "search"]
    assert any("caller=9001" in (e["detail"] or "") and e["actor"] == "root" for e in searches)


def test_filter_by_a_qa_metric(login_page, console_store) -> None:
    page = login_page("admin")
    page.select_option("select[name=metric]", "talk_ratio")
    page.fill("input[name=min]", "25")
    page.fill("input[name=max]", "50")
    page.click("form#filters button[type=submit]")
    page.wait_for_url("**/calls?*metric=talk_ratio*")
    links = {a.get_attribute("href").rsplit("/", 1)[1] for a in page.locator("a.call-link").all()}
    assert links == {console_store.calls["desk-1"][2], console_store.calls["desk-2"][0]}  # 50 % and 25 %
    assert page.locator("select[name=metric]").input_value() == "talk_ratio"  # the form shows it back
    assert "agent talks 25%" in page.locator("table.calls").inner_text()
    page.screenshot(path=SCREENSHOTS / "calls-metric.png", full_page=True)
    page.fill("input[name=min]", "much")
    page.click("form#filters button[type=submit]")
    page.wait_for_url("**/calls?*min=much*")
    assert "not a whole percent" in page.locator("p.error").inner_text()


def test_open_a_call_shows_metadata_markers_and_evidence(login_page, console_store) -> None:
    start = log_end(console_store)
    page = login_page("supervisor")
    with page.expect_navigation():  # waits for the page's load event: every section is there
        page.locator("a.call-link").first.click()
    assert page.locator("#evidence .badge.ok").count() >= 3  # signature, chain, receipt
    assert page.locator("#markers tr.marker").count() >= 3  # call start, announcement start and end
    assert page.locator("#player").count() == 1
    page.screenshot(path=SCREENSHOTS / "call-supervisor.png", full_page=True)
    views = [e for e in log_since(console_store, start) if e["action"] == "view"]
    assert views and views[-1]["actor"] == "sue" and views[-1]["device_id"] == "desk-1"


def test_an_agent_cannot_open_another_agents_call_by_its_url(login_page, console_store) -> None:
    page = login_page("agent")
    others = [(d, r) for (d, r), agent in console_store.assigned.items() if agent != "ann"]
    for device, rid in others:
        response = page.goto(f"/calls/{device}/{rid}")
        assert response.status == 404, (device, rid)
        assert page.locator("h1").inner_text() == "Not found"
    page.screenshot(path=SCREENSHOTS / "call-not-yours.png")
    own = [(d, r) for (d, r), agent in console_store.assigned.items() if agent == "ann"]
    assert page.goto(f"/calls/{own[0][0]}/{own[0][1]}").status == 200


def test_download_selected_calls_as_a_zip(login_page, console_store) -> None:
    start = log_end(console_store)
    page = login_page("reviewer")
    page.check("input[data-select-all]")
    with page.expect_download() as download:
        page.click("#download")
    data = download.value.path().read_bytes()
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    ann = sorted(f"{d}/{r}" for (d, r), agent in console_store.assigned.items() if agent == "ann"
                 and (d, r) != console_store.erased)
    assert sorted(n[:-4] for n in names if n.endswith(".wav")) == ann
    manifest = json.loads(zipfile.ZipFile(io.BytesIO(data)).read(f"{ann[0]}.manifest.json"))
    assert manifest["device_id"] == "desk-1"
    downloads = [e for e in log_since(console_store, start) if e["action"] == "download"]
    assert sorted(f"{e['device_id']}/{e['recording_id']}" for e in downloads) == ann
    assert {e["actor"] for e in downloads} == {"rita"}


def test_an_auditor_without_audio_sees_calls_but_cannot_download(login_page, console_store) -> None:
    page = login_page("auditor")
    assert page.locator("#download").count() == 0
    device, rid = "desk-1", console_store.calls["desk-1"][0]
    page.goto(f"/calls/{device}/{rid}")
    assert page.locator("#evidence").count() == 1 and page.locator("#player").count() == 0


def test_an_erased_and_a_damaged_recording_say_why(login_page, console_store) -> None:
    page = login_page("admin")
    device, rid = console_store.erased
    assert page.goto(f"/calls/{device}/{rid}").status == 200
    assert "GDPR art. 17" in page.locator("#evidence").inner_text()
    page.screenshot(path=SCREENSHOTS / "call-erased.png", full_page=True)
    device, rid = console_store.corrupt
    assert page.goto(f"/calls/{device}/{rid}").status == 200
    evidence = page.locator("tr.evidence-signature").inner_text()
    assert "broken" in evidence and "altered" in evidence
    assert "Traceback" not in page.content()
    page.screenshot(path=SCREENSHOTS / "call-damaged.png", full_page=True)


def test_admin_adds_a_user_and_assigns_a_desk(login_page, console_store) -> None:
    start = log_end(console_store)
    page = login_page("admin")
    page.goto("/admin/users")
    page.fill("#add-user input[name=name]", "carol")
    page.select_option("#add-user select[name=role]", "agent")
    page.fill("#add-user input[name=team]", "blue")
    with page.expect_navigation():
        page.click("#add-user button")
    assert "carol" in page.locator("#new-password").inner_text()
    page.screenshot(path=SCREENSHOTS / "admin-users.png", full_page=True)
    page.goto("/admin/desks")
    page.select_option("#assign-desk select[name=device]", "desk-2")
    page.select_option("#assign-desk select[name=agent]", "carol")
    page.fill("#assign-desk input[name=from]", "2099-01-01T00:00")  # after every stored call
    with page.expect_navigation():
        page.click("#assign-desk button")
    page.wait_for_selector("text=carol")
    page.screenshot(path=SCREENSHOTS / "admin-desks.png", full_page=True)
    actions = [(e["action"], e["actor"]) for e in log_since(console_store, start)]
    assert ("user", "root") in actions and ("desk", "root") in actions
