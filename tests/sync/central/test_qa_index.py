"""The index's QA tables on both backends (SQLite, PostgreSQL): forms, evaluations, their life, comments."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from linetap.sync.central.index import IndexTables, SqliteIndex
from linetap.sync.central.pgindex import PgIndex
from linetap.sync.central.qaindex import FormVersionTaken, StaleEvaluation


@pytest.fixture(params=["sqlite", "postgres"])
def index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[IndexTables]:
    opened = SqliteIndex(tmp_path / "index.db") if request.param == "sqlite" else \
        PgIndex(request.getfixturevalue("pg_url"))
    with opened:
        yield opened


def evaluation(eid: str = "e1", **changes: Any) -> dict[str, Any]:
    row = {"evaluation_id": eid, "device_id": "box-a", "recording_id": "r1", "form_id": "inbound",
           "form_version": 1, "reviewer": "rita", "agent": "alice", "answers": {"greeting": "yes", "empathy": 3},
           "score": 8750, "raw_score": 8750, "critical_failed": (), "passed": True, "note": None,
           "submitted_ms": 1000}
    return row | changes


def test_form_versions_are_kept_and_never_change(index: IndexTables) -> None:
    assert index.add_form("inbound", 1, "Inbound", "id = 1", "root", 10)
    assert not index.add_form("inbound", 1, "Inbound", "id = 1", "root", 11)  # the same file again
    with pytest.raises(FormVersionTaken, match="next version number"):
        index.add_form("inbound", 1, "Inbound", "id = 2", "root", 12)
    index.add_form("inbound", 2, "Inbound v2", "id = 2", "root", 13)
    index.add_form("alpha", 1, "Alpha", "a", "ops", 14)
    assert [(f["form_id"], f["version"]) for f in index.forms()] == [("alpha", 1), ("inbound", 1), ("inbound", 2)]
    assert index.form("inbound")["source"] == "id = 2"
    assert index.form("inbound", 1) | {} == {"form_id": "inbound", "version": 1, "title": "Inbound",
                                             "source": "id = 1", "added_ms": 10, "added_by": "root"}
    assert index.form("nope") is None and index.form("inbound", 9) is None


def test_an_evaluation_is_amended_as_new_versions(index: IndexTables) -> None:
    index.submit_evaluation(evaluation(), "rita", 1000)
    got = index.evaluation("e1")
    assert (got["version"], got["state"], got["answers"], got["passed"]) == (1, "submitted",
                                                                           {"greeting": "yes", "empathy": 3}, True)
    assert got["critical_failed"] == ()
    amended = evaluation(answers={"greeting": "no", "empathy": 3}, score=0, raw_score=8000,
                         critical_failed=("greeting",), passed=False, submitted_ms=2000, note="missed it")
    assert index.amend_evaluation(amended, "submitted", "submitted", "rita", "missed it", 2000) == 2
    got = index.evaluation("e1")
    assert (got["version"], got["score"], got["critical_failed"], got["passed"]) == (2, 0, ("greeting",), False)
    assert [v["score"] for v in got["versions"]] == [8750, 0]  # the first version is kept as it was
    assert [(e["action"], e["state"], e["actor"]) for e in got["events"]] == [
        ("submit", "submitted", "rita"), ("amend", "submitted", "rita")]
    assert index.evaluation("nope") is None


def test_steps_are_stored_only_from_the_state_they_were_decided_in(index: IndexTables) -> None:
    index.submit_evaluation(evaluation(), "rita", 1000)
    index.evaluation_event("e1", "submitted", "dispute", "disputed", "alice", "I did greet", 1100)
    with pytest.raises(StaleEvaluation, match="is disputed now, not submitted"):
        index.evaluation_event("e1", "submitted", "acknowledge", "acknowledged", "alice", None, 1200)
    with pytest.raises(StaleEvaluation, match="is disputed now"):
        index.amend_evaluation(evaluation(), "submitted", "submitted", "rita", None, 1200)
    index.evaluation_event("e1", "disputed", "resolve", "resolved", "sam", "upheld", 1300)
    got = index.evaluation("e1")
    assert got["state"] == "resolved" and got["state_ms"] == 1300 and got["version"] == 1
    assert [e["note"] for e in got["events"]] == [None, "I did greet", "upheld"]
    with pytest.raises(StaleEvaluation, match="does not exist"):
        index.evaluation_event("nope", "submitted", "dispute", "disputed", "alice", None, 1)


def test_two_people_acting_at_once_one_wins(index: IndexTables) -> None:
    index.submit_evaluation(evaluation(), "rita", 1000)
    start, results = threading.Barrier(6), []

    def act(n: int) -> None:
        start.wait(10)
        try:
            index.evaluation_event("e1", "submitted", "acknowledge", "acknowledged", f"a{n}", None, 2000 + n)
            results.append("won")
        except StaleEvaluation:
            results.append("stale")

    threads = [threading.Thread(target=act, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == ["stale"] * 5 + ["won"]
    assert len(index.evaluation("e1")["events"]) == 2


def test_evaluations_filtered_newest_version_each(index: IndexTables) -> None:
    index.submit_evaluation(evaluation("e1"), "rita", 1000)
    index.submit_evaluation(evaluation("e2", agent="bob", recording_id="r2", submitted_ms=3000), "rita", 3000)
    index.submit_evaluation(evaluation("e3", device_id="box-b", submitted_ms=2000), "rita", 2000)
    index.amend_evaluation(evaluation("e1", score=5000, submitted_ms=4000), "submitted", "submitted", "rita", None,
                           4000)
    assert [(e["evaluation_id"], e["version"]) for e in index.evaluations()] == [("e3", 1), ("e2", 1), ("e1", 2)]
    assert [e["evaluation_id"] for e in index.evaluations(agent="alice")] == ["e3", "e1"]
    assert [e["evaluation_id"] for e in index.evaluations(device_id="box-a", recording_id="r1")] == ["e1"]
    assert [e["evaluation_id"] for e in index.evaluations(since_ms=2000, until_ms=4000)] == ["e3", "e2"]


def test_comments_by_position(index: IndexTables) -> None:
    for cid, pos, at in (("c1", 5000, 1), ("c2", 1000, 3), ("c3", 1000, 2)):
        index.add_comment({"comment_id": cid, "device_id": "box-a", "recording_id": "r1", "author": "rita",
                           "position_ms": pos, "body": f"at {pos}", "created_ms": at})
    index.add_comment({"comment_id": "c4", "device_id": "box-b", "recording_id": "r1", "author": "rita",
                       "position_ms": 0, "body": "other box", "created_ms": 1})
    assert [c["comment_id"] for c in index.comments("box-a", "r1")] == ["c3", "c2", "c1"]
    assert index.comments("box-a", "r9") == []


def test_the_calls_search_by_the_score_a_call_was_given_last(index: IndexTables) -> None:
    from linetap.sync.central.consoleindex import Search
    from linetap.sync.central.web.evaluations import search_conditions

    for n in (1, 2, 3):
        started = 1_000_000 + n * 60_000
        index.add_recording({
            "recording_id": f"r{n}", "device_id": "box-a", "seq": n, "started_ms": started, "ended_ms": started + 1,
            "duration_ms": 1, "flagged": False, "recorded": True, "discarded": False, "ended_by": "hangup",
            "consent": None, "metrics": None, "caller_number": None, "caller_name": None, "caller_withheld": None,
            "manifest_sha256": f"{n:064x}", "prev": f"{n - 1:064x}", "segments": 1, "bytes": 1,
            "manifest_key": f"m{n}", "stored_ms": 1})
    index.submit_evaluation(evaluation("e1", recording_id="r1", score=9000, submitted_ms=10), "rita", 10)
    index.submit_evaluation(evaluation("e2", recording_id="r1", score=4000, submitted_ms=20), "rita", 20)
    index.submit_evaluation(evaluation("e3", recording_id="r2", score=8000, submitted_ms=30), "rita", 30)
    index.amend_evaluation(evaluation("e3", recording_id="r2", score=9500, submitted_ms=40), "submitted",
                           "submitted", "rita", None, 40)

    def found(**values: str) -> list[str]:
        rows, _ = index.search_recordings(Search(extra=tuple(search_conditions(values)), sort="started",
                                                 descending=False))
        return [r["recording_id"] for r in rows]

    assert found(min_score="80") == ["r2"]  # r1 was given 40 % last; r2's amendment 95 %
    assert found(max_score="50") == ["r1"]
    assert found(min_score="0") == ["r1", "r2"]  # r3 has no evaluation
    assert found(min_score="x", max_score="101") == ["r1", "r2", "r3"]  # refused values filter nothing


def test_erasing_a_recording_replaces_what_people_wrote_about_it(index: IndexTables) -> None:
    index.submit_evaluation(evaluation(note="the caller, Ada Smith, was upset"), "rita", 1000)
    index.evaluation_event("e1", "submitted", "dispute", "disputed", "alice", "Ada asked for it", 1100)
    index.submit_evaluation(evaluation("e2", recording_id="r2", note="kept"), "rita", 1000)
    for cid, rid in (("c1", "r1"), ("c2", "r2")):
        index.add_comment({"comment_id": cid, "device_id": "box-a", "recording_id": rid, "author": "rita",
                           "position_ms": 0, "body": "Ada's card number was read out", "created_ms": 1})
    index.mark_erased("r1", 2000, "GDPR", "tomb", device_id="box-a")
    erased = index.evaluation("e1")
    assert erased["note"] is None and [e["note"] for e in erased["events"]] == [None, None]
    assert (erased["score"], erased["state"], erased["answers"]) == (8750, "disputed", {"greeting": "yes", "empathy": 3})
    assert [c["body"] for c in index.comments("box-a", "r1")] == ["(erased with the recording)"]
    assert index.evaluation("e2")["note"] == "kept" and index.comments("box-a", "r2")[0]["body"].startswith("Ada")
