"""Evaluations, comments, dashboards and the access log page on a real console process (HTTP as a browser
makes it): who may score, dispute, resolve and amend, what is refused and why, what the log then says."""

from __future__ import annotations

import csv
import io
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from consoleclient import Client, password_of

from linetap.sync.central.accesslog import verify_log
from linetap.sync.central.cli import main as central_main
from linetap.sync.central.index import INDEX_FILE, SqliteIndex

FORM = """
id = "service"
version = 1
title = "Service call"
pass_score = 70

[[sections]]
title = "Opening"
[[sections.questions]]
id = "greeting"
text = "Greeted the caller with the company's name"
kind = "yes_no"
critical = true
[[sections.questions]]
id = "verified"
text = "Checked who the caller is"
kind = "yes_no"
weight = 2
allow_na = true

[[sections]]
title = "Manner"
[[sections.questions]]
id = "empathy"
text = "Showed empathy"
kind = "scale"
scale_max = 4
"""
SCREENSHOTS = Path(__file__).parent / "screenshots"  # the browser fixture makes it (conftest.py)
EVALUATION_LINK = re.compile(r'href="/evaluations/([0-9a-f]{32})"')


@pytest.fixture(scope="session")
def qa_form(console_store: Any, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The form reviewers score on, stored as an admin would with ``linetap-central forms add``."""
    path = tmp_path_factory.mktemp("forms") / "service.toml"
    path.write_text(FORM)
    assert central_main(["--data-dir", str(console_store.data_dir), "forms", "add", str(path)]) == 0
    return "service"


def read(store: Any, method: str, *args: object) -> Any:
    """What the store's index answers now (opened and closed around the one call)."""
    with SqliteIndex(store.data_dir / INDEX_FILE) as index:
        return getattr(index, method)(*args)


def client_as(console: str, name: str) -> Client:
    client = Client(console)
    assert client.login(name, password_of(name)).status == 303
    return client


def call_path(device: str, rid: str) -> str:
    return f"/calls/{quote(device)}/{quote(rid)}"


def ann_call(store: Any, n: int = 0) -> tuple[str, str]:
    return "desk-1", store.calls["desk-1"][n]  # desk-1's first two calls are ann's (team red)


def submit(client: Client, path: str, **answers: str) -> tuple[int, str | None]:
    """Score a call; (status, the new evaluation's id when it was stored)."""
    page = client.get(path)
    before = set(EVALUATION_LINK.findall(page.text))
    form = {"csrf": client.csrf(path), "form_id": "service", "form_version": "1", "note": "scored while listening"}
    form.update({f"q_{k}": v for k, v in answers.items()})
    answer = client.post(f"{path}/evaluations", form)
    after = set(EVALUATION_LINK.findall(client.get(path).text))
    new = after - before
    return answer.status, (new.pop() if new else None)


def step(client: Client, evaluation_id: str, action: str, note: str = "") -> int:
    token = client.csrf(f"/evaluations/{evaluation_id}")
    return client.post(f"/evaluations/{evaluation_id}/{action}", {"csrf": token, "note": note}).status


def test_a_reviewer_scores_the_agent_disputes_the_supervisor_resolves(console: str, console_store: Any,
                                                                      qa_form: str) -> None:
    path = call_path(*ann_call(console_store))
    rita = client_as(console, "rita")
    status, eid = submit(rita, path, greeting="yes", verified="no", empathy="3")
    assert status == 303 and eid is not None
    shown = rita.get(f"/evaluations/{eid}").text
    assert "43.8 %" in shown and "submitted" in shown  # (1 + 0 + 3/4) of (1 + 2 + 1)

    ann = client_as(console, "ann")
    assert step(ann, eid, "dispute") == 400  # a dispute needs a reason
    assert step(ann, eid, "dispute", "I did check: see 0:40") == 303
    assert step(ann, eid, "acknowledge") == 403  # disputed: only a supervisor moves it on
    assert step(rita, eid, "resolve", "upheld") == 403  # a reviewer may not resolve
    sue = client_as(console, "sue")
    assert step(sue, eid, "resolve", "checked the recording: the score stands") == 303
    page = sue.get(f"/evaluations/{eid}").text
    assert "resolved" in page and "I did check: see 0:40" in page and "the score stands" in page

    details = [e["detail"] for e in read(console_store, "access_log") if e["action"] == "evaluate"]
    assert any(d.startswith(f"submit {eid} form service v1 score 43.8 %") for d in details)
    assert f"dispute {eid}" in details and f"resolve {eid}" in details


def test_an_amendment_is_a_new_version_and_the_old_one_stays(console: str, console_store: Any,
                                                              qa_form: str) -> None:
    rita = client_as(console, "rita")
    status, eid = submit(rita, call_path(*ann_call(console_store)), greeting="yes", verified="yes", empathy="4")
    assert status == 303
    token = rita.csrf(f"/evaluations/{eid}")
    answer = rita.post(f"/evaluations/{eid}/amend", {"csrf": token, "form_id": "service", "form_version": "1",
                                                     "q_greeting": "no", "q_verified": "yes", "q_empathy": "4",
                                                     "note": "missed the greeting"})
    assert answer.status == 303
    page = rita.get(f"/evaluations/{eid}").text
    assert "Version 2" in page and "Version 1" in page and "critical failed: greeting" in page
    found = read(console_store, "evaluation", eid)
    assert [v["score"] for v in found["versions"]] == [10000, 0] and found["versions"][1]["raw_score"] == 7500
    ann = client_as(console, "ann")
    assert step(ann, eid, "acknowledge") == 303
    assert ann.get(f"/evaluations/{eid}").text.count("acknowledged") >= 1


@pytest.mark.parametrize(("answers", "named"), [
    ({"greeting": "yes", "verified": "yes"}, "question &#39;empathy&#39;: no answer given"),
    ({"greeting": "na", "verified": "yes", "empathy": "1"}, "question &#39;greeting&#39; cannot be not applicable"),
    ({"greeting": "yes", "verified": "yes", "empathy": "9"}, "from 0 to 4"),
])
def test_bad_answers_are_refused_by_name_and_nothing_is_stored(console: str, console_store: Any,
                                                                qa_form: str, answers: dict, named: str) -> None:
    rita = client_as(console, "rita")
    path = call_path(*ann_call(console_store))
    before = len(read(console_store, "evaluations"))
    form = {"csrf": rita.csrf(path), "form_id": "service", "form_version": "1"}
    form.update({f"q_{k}": v for k, v in answers.items()})
    answer = rita.post(f"{path}/evaluations", form)
    assert answer.status == 400 and named in answer.text and "nothing was stored" in answer.text
    assert len(read(console_store, "evaluations")) == before


def test_who_may_see_and_act_on_an_evaluation(console: str, console_store: Any, qa_form: str) -> None:
    rita = client_as(console, "rita")
    status, eid = submit(rita, call_path(*ann_call(console_store)), greeting="yes", verified="na", empathy="2")
    assert status == 303
    bob = client_as(console, "bob")  # another agent, another team: the evaluation does not exist for him
    assert bob.get(f"/evaluations/{eid}").status == 404
    token = bob.csrf("/calls")
    assert bob.post(f"/evaluations/{eid}/acknowledge", {"csrf": token}).status == 404
    assert bob.post(f"{call_path(*ann_call(console_store))}/evaluations",
                    {"csrf": token, "form_id": "service", "form_version": "1"}).status in (403, 404)
    ann = client_as(console, "ann")
    assert ann.post(f"{call_path(*ann_call(console_store))}/evaluations",
                    {"csrf": ann.csrf("/calls"), "form_id": "service", "form_version": "1", "q_greeting": "yes",
                     "q_verified": "yes", "q_empathy": "4"}).status == 403  # agents do not score themselves
    assert ann.post(f"/evaluations/{eid}/delete", {"csrf": ann.csrf("/calls")}).status == 404
    assert "Waiting for you" in ann.get("/evaluations").text


def test_comments_at_a_position(console: str, console_store: Any) -> None:
    path = call_path(*ann_call(console_store, 1))
    rita = client_as(console, "rita")
    answer = rita.post(f"{path}/comments", {"csrf": rita.csrf(path), "position_ms": "1500",
                                            "body": "<b>hold music</b> starts here"})
    assert answer.status == 303
    page = rita.get(path).text
    assert "&lt;b&gt;hold music&lt;/b&gt; starts here" in page and 'data-seek-ms="1500"' in page
    assert rita.post(f"{path}/comments", {"csrf": rita.csrf(path), "position_ms": "-5", "body": "x"}).status == 400
    audrey = client_as(console, "audrey")
    assert audrey.post(f"{path}/comments", {"csrf": audrey.csrf(path), "body": "x"}).status == 403


def test_dashboards_follow_the_scope_and_export_csv(console: str, console_store: Any,
                                                   qa_form: str) -> None:
    rita = client_as(console, "rita")
    submit(rita, call_path(*ann_call(console_store)), greeting="yes", verified="yes", empathy="2")
    page = rita.get("/dashboards?since=2000-01-01")
    assert page.status == 200
    for svg in re.findall(r"<svg .*?</svg>", page.text, flags=re.S):
        ET.fromstring(svg)  # every chart is well-formed XML
    agents = rita.get("/dashboards.csv?table=agents&since=2000-01-01")
    assert agents.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(agents.text)))
    assert [r["agent"] for r in rows] == ["ann"]  # rita's team is red: ann only, not bob
    assert int(rows[0]["evaluations"]) >= 1 and int(rows[0]["calls"]) == 2
    ann = client_as(console, "ann")
    assert [r["agent"] for r in csv.DictReader(io.StringIO(
        ann.get("/dashboards.csv?table=agents&since=2000-01-01&agent=bob").text))] == []
    assert rita.get("/dashboards.csv?table=secrets").status == 400
    assert client_as(console, "audrey").get("/dashboards").status == 403


def test_the_access_log_page_filters_exports_and_verifies(console: str, console_store: Any,
                                                         tmp_path: Path) -> None:
    audrey = client_as(console, "audrey")
    page = audrey.get("/auditlog?action=login")
    assert page.status == 200 and "the chain holds" in page.text and "audrey" in page.text
    assert "is not logged; choose one of" in audrey.get("/auditlog?action=nope").text
    whole = audrey.get("/auditlog.jsonl")
    entries = [json.loads(line) for line in whole.text.splitlines()]
    assert verify_log(entries) is None and entries[0]["pos"] == 0
    rows = list(csv.DictReader(io.StringIO(audrey.get("/auditlog.csv?actor=rita").text)))
    assert rows and {r["actor"] for r in rows} == {"rita"}
    assert audrey.get("/auditlog.xml").status == 404
    last = read(console_store, "access_log")[-1]
    assert (last["actor"], last["action"]) == ("audrey", "export") and "access log csv" in last["detail"]
    assert client_as(console, "rita").get("/auditlog").status == 403


# -- in the browser --

# The page's CSP forbids eval, which wait_for_function needs: wait on the player's own timeupdate events.
PLAYED_PAST = """past => new Promise((resolve, reject) => {
  const player = document.getElementById('player');
  const check = () => { if (player.currentTime > past) { player.removeEventListener('timeupdate', check);
                                                          resolve(player.currentTime); } };
  player.addEventListener('timeupdate', check);
  setTimeout(() => reject(new Error('the player did not pass ' + past + ' s in 15 s')), 15000);
  check();
})"""


def played_past(page: Any, seconds: float) -> float:
    """Wait until the page's player has played past ``seconds``; its time then."""
    return float(page.evaluate(PLAYED_PAST, seconds))


def test_in_the_browser_score_while_playing_dispute_resolve_and_see_it_in_the_log(
        login_page: Any, console_store: Any, qa_form: str) -> None:
    path = call_path(*ann_call(console_store, 1))
    rita = login_page("reviewer")
    rita.goto(path)
    rita.evaluate("document.getElementById('player').play()")
    started = played_past(rita, 0.2)
    rita.check("input[name=q_greeting][value=yes]")
    rita.check("input[name=q_verified][value=na]")
    rita.check("input[name=q_empathy][value='3']")
    rita.fill("textarea[name=note]", "friendly, did not need to check the caller")
    assert played_past(rita, started) > started  # it played on while the reviewer scored
    rita.screenshot(path=str(SCREENSHOTS / "qa-score-while-playing.png"), full_page=True)
    rita.click("#scoring-submit")
    rita.wait_for_url("**#evaluations")
    assert "Evaluation submitted: 87.5 %" in rita.inner_text(".flash")  # (1 + 3/4) of 2, verified n/a
    eid = rita.get_attribute("tr.qa-evaluation >> nth=-1 >> a", "href").rsplit("/", 1)[1]

    ann = login_page("agent")
    ann.goto("/evaluations")
    ann.click(f"a[href='/evaluations/{eid}'] >> nth=0")
    ann.fill("form.qa-step input[name=note]", "the caller was verified by the IVR")
    ann.click("button.qa-dispute")
    ann.wait_for_url("**#evaluations")
    ann.screenshot(path=str(SCREENSHOTS / "qa-disputed-by-agent.png"), full_page=True)

    sue = login_page("supervisor")
    sue.goto("/evaluations?state=disputed")
    sue.click(f"#waiting a[href='/evaluations/{eid}']")
    sue.fill("form.qa-step input[name=note]", "IVR verification counts; the score stands")
    sue.click("button.qa-resolve")
    sue.wait_for_url("**#evaluations")
    sue.goto(f"/evaluations/{eid}")
    assert "resolved" in sue.inner_text("#evaluation-now")
    sue.screenshot(path=str(SCREENSHOTS / "qa-evaluation-resolved.png"), full_page=True)

    audrey = login_page("auditor")
    audrey.goto("/auditlog?action=evaluate")
    text = audrey.inner_text("table.auditlog")
    assert f"dispute {eid}" in text and f"resolve {eid}" in text and f"submit {eid}" in text
    assert "the chain holds" in audrey.inner_text("#verify")
    audrey.screenshot(path=str(SCREENSHOTS / "qa-access-log.png"), full_page=True)
    with audrey.expect_download() as download:
        audrey.click("#export-csv")
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    assert {r["actor"] for r in rows if r["detail"] and eid in r["detail"]} == {"rita", "ann", "sue"}


def test_in_the_browser_dashboards_and_a_csv_download(login_page: Any, qa_form: str) -> None:
    sue = login_page("supervisor")
    sue.goto("/dashboards?since=2000-01-01")
    assert sue.locator("#charts svg").count() == 7
    sue.screenshot(path=str(SCREENSHOTS / "qa-dashboards.png"), full_page=True)
    with sue.expect_download() as download:
        sue.click("#table-weekly a.csv")
    assert Path(download.value.path()).read_text().startswith("week,evaluations,average")


def test_the_calls_page_shows_and_filters_by_score(console: str, console_store: Any, qa_form: str) -> None:
    rita = client_as(console, "rita")
    status, eid = submit(rita, call_path(*ann_call(console_store)), greeting="yes", verified="yes", empathy="0")
    assert status == 303  # (1 + 2 + 0) of 4: 75 %, the newest evaluation of that call
    scored = rita.get("/calls?min_score=75&max_score=75")
    assert console_store.calls["desk-1"][0] in scored.text and "75.0 % (submitted)" in scored.text
    assert console_store.calls["desk-1"][1] not in rita.get("/calls?min_score=75&max_score=75").text
    assert console_store.calls["desk-1"][0] not in rita.get("/calls?min_score=76").text
    assert "min_score &#39;ninety&#39;: not a whole percent from 0 to 100" in rita.get("/calls?min_score=ninety").text


def test_the_calls_page_filters_by_a_qa_metric_and_a_saved_filter_keeps_it(console: str, console_store: Any) -> None:
    root = client_as(console, "root")  # talk ratios (conftest): desk-1 80, -, 50, erased; desk-2 25, -
    one, two = console_store.calls["desk-1"], console_store.calls["desk-2"]

    def listed(query: str) -> set[str]:
        page = root.get(f"/calls?{query}")
        assert page.status == 200, page.text[:300]
        return set(re.findall(r'class="call-link" href="/calls/[^/]+/([^"]+)"', page.text))

    assert listed("metric=talk_ratio&min=60") == {one[0]}
    assert listed("metric=talk_ratio&min=25&max=50") == {one[2], two[0]}
    assert listed("metric=talk_ratio&max=24") == set()
    assert listed("metric=talk_ratio") == {one[0], one[2], two[0]}  # the calls that have one
    assert listed("metric=silence_share&min=20&max=20") == {one[0], one[2], two[0]}
    bad = root.get("/calls?metric=talk_ratio&min=ninety")
    assert bad.status == 200 and "min &#39;ninety&#39;: not a whole percent from 0 to 100" in bad.text
    assert listed("metric=talk_ratio&min=ninety") == listed("")  # that filter is left out, not every call
    assert "must be one of talk_ratio" in root.get("/calls?metric=__class__").text
    ann = client_as(console, "ann")  # an agent's own calls only, whatever the metric says
    assert set(re.findall(r'href="/calls/[^/]+/([^"]+)"', ann.get("/calls?metric=talk_ratio&min=0").text)) == {one[0]}
    saved = root.post("/calls/filters", {"csrf": root.csrf(), "name": "talkative",
                                         "query": "metric=talk_ratio&min=60&flagged=no"})
    assert saved.status == 303
    assert {"name": "talkative", "query": "flagged=no&metric=talk_ratio&min=60"} in read(
        console_store, "saved_filters", "root")
    refused = root.post("/calls/filters", {"csrf": root.csrf(), "name": "broken", "query": "metric=talk_ratio&max=200"})
    assert refused.status == 400 and "not a whole percent" in refused.text


def test_in_the_browser_a_comment_at_the_players_time_seeks_back_to_it(login_page: Any, console_store: Any) -> None:
    path = call_path("desk-2", console_store.calls["desk-2"][0])  # bob's call: sue may not see it, rita neither
    root = login_page("admin")
    root.goto(path)
    root.evaluate("document.getElementById('player').play()")
    played_past(root, 0.5)
    root.evaluate("document.getElementById('player').pause()")
    root.click("#comment-now")
    at_ms = int(root.input_value("#comment-position"))
    assert at_ms >= 500
    root.fill("input[name=body]", "the caller asks for a refund here")
    root.click("#comment-form button[type=submit]")
    root.wait_for_url("**#comments")
    seek = root.locator(f"button.qa-seek[data-seek-ms='{at_ms}']")
    assert "the caller asks for a refund here" in root.inner_text("#comments")
    seek.click()  # seeks the player there and plays from it
    assert played_past(root, at_ms / 1000 - 0.01) >= at_ms / 1000 - 0.01
    root.screenshot(path=str(SCREENSHOTS / "qa-comments.png"), full_page=True)
