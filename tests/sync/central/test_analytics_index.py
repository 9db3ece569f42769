"""The speech-analytics statements behave alike on SQLite and PostgreSQL: flagged first, leases, results in
one transaction, full-text search (FTS5 and tsvector), the summary `list --json` shows."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from linetap.sync.central.analytics.tables import LeaseLost, Results, SearchRefused
from linetap.sync.central.index import IndexTables
from test_index_contract import Backend, backend, rid, row  # noqa: F401  (the two-backend fixture)


@pytest.fixture
def index(backend: Backend) -> Iterator[IndexTables]:  # noqa: F811
    with backend.open() as opened:
        yield opened


def results(device: str, n: int, words: list[str]) -> Results:
    packed = [[i * 400, i * 400 + 300, 90, w] for i, w in enumerate(words)]
    line = (device, rid(n), "far", 0, 0, len(words) * 400, " ".join(words), json.dumps(packed))
    adherence = [(device, rid(n), "inbound", "greeting", "required", 1, 88, 0, "thank you")]
    events = [(device, rid(n), "spoken-card-data", "far", 400, 1200, "card-number", 7)]
    return Results([line], adherence, events, "test-engine")


def test_flagged_first_then_oldest_and_a_lease_keeps_others_out(index: IndexTables) -> None:
    index.add_recording(row("desk", 1))
    index.add_recording(row("desk", 2, flagged=True))
    assert index.enqueue_jobs(10) == 2 and index.enqueue_jobs(11) == 0
    first = index.claim_job("a", 100, 1000, 3)
    second = index.claim_job("b", 100, 1000, 3)
    assert (first["recording_id"], second["recording_id"]) == (rid(2), rid(1))
    assert index.claim_job("c", 500, 1000, 3) is None
    assert index.claim_job("c", 1101, 1000, 3)["recording_id"] == rid(2)  # a's lease ran out
    with pytest.raises(LeaseLost):
        index.finish_job("desk", rid(2), "a", results("desk", 2, ["hello"]), 1200)
    assert index.transcript("desk", rid(2)) == []
    assert index.renew_lease("desk", rid(1), "b", 5000) and not index.renew_lease("desk", rid(1), "a", 5000)


def test_results_search_and_summary(index: IndexTables) -> None:
    index.add_recording(row("desk", 1))
    index.add_recording(row("desk", 2))
    index.enqueue_jobs(10)
    for n, words in ((1, ["I", "am", "calling", "about", "the", "invoice"]), (2, ["goodbye", "now"])):
        index.claim_job("w", 100, 1000, 3)
        index.finish_job("desk", rid(n), "w", results("desk", n, words), 200)
    hits = index.search_transcripts("calls about")  # stemmed: "calls" finds "calling"
    assert [(h["recording_id"], h["words"][2][3]) for h in hits] == [(rid(1), "calling")]
    assert index.search_transcripts("invoice calling") == []  # a phrase: its words in order
    assert index.search_transcripts('"; DROP TABLE x') == []
    for phrase, limit, why in (("  ", 50, "1 to 500 characters"), ("x" * 501, 50, "not 501"),
                               ("invoice", -1, "not -1"), ("invoice", 10**12, "1 to 1000 hits")):
        with pytest.raises(SearchRefused, match=why):  # LIMIT -1 would be no limit at all in SQLite
            index.search_transcripts(phrase, limit)
    summary = index.analysis_summary()[("desk", rid(1))]
    assert summary == {"transcript": "done", "reason": None, "attempts": 1, "spoken_card_data": True,
                       "adherence": {"passed": 1, "failed": 0}}
    assert index.adherence_results("desk", rid(1))[0]["passed"] is True
    assert index.analysis_events("desk", rid(1))[0]["detail"] == "card-number"


def test_failed_jobs_are_retried_a_bounded_number_of_times(index: IndexTables) -> None:
    index.add_recording(row("desk", 1))
    index.enqueue_jobs(10)
    for attempt in range(2):
        job = index.claim_job("w", 100 + attempt, 1000, 2)
        assert job["attempt"] == attempt + 1
        assert index.end_job("desk", rid(1), "w", "failed", "AuthError: does not decrypt", 100)
    assert index.claim_job("w", 200, 1000, 2) is None
    assert index.analysis_jobs("failed")[0]["reason"] == "AuthError: does not decrypt"


def test_erasure_forgets_what_was_said_and_a_late_result_is_not_written(index: IndexTables) -> None:
    index.add_recording(row("desk", 1))
    index.add_recording(row("desk", 2))
    index.enqueue_jobs(10)
    index.claim_job("w", 100, 1000, 3)
    index.finish_job("desk", rid(1), "w", results("desk", 1, ["my", "invoice"]), 200)
    index.claim_job("w", 100, 1000, 3)
    index.mark_erased(rid(1), 300, "asked", "t1", device_id="desk")
    index.mark_erased(rid(2), 300, "asked", "t2", device_id="desk")  # while its job runs
    index.finish_job("desk", rid(2), "w", results("desk", 2, ["my", "invoice"]), 400)
    for n in (1, 2):
        assert index.transcript("desk", rid(n)) == [] and index.adherence_results("desk", rid(n)) == []
        assert index.analysis_events("desk", rid(n)) == []
    assert index.search_transcripts("invoice") == []
