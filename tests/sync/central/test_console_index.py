"""The index's console tables on both backends (SQLite, PostgreSQL): users, sessions, failed logins, desks,
saved filters, and the calls search with its scope, filters, sorting and paging."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from linetap.sync.central.consoleindex import DuplicateUser, Search, Span
from linetap.sync.central.index import IndexTables, SqliteIndex
from linetap.sync.central.pgindex import PgIndex


@pytest.fixture(params=["sqlite", "postgres"])
def index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[IndexTables]:
    opened = SqliteIndex(tmp_path / "index.db") if request.param == "sqlite" else \
        PgIndex(request.getfixturevalue("pg_url"))
    with opened:
        yield opened


def call(device: str, n: int, **changes: Any) -> dict[str, Any]:
    started = 1_000_000 + n * 60_000
    base = {"recording_id": str(uuid.UUID(int=n)), "device_id": device, "seq": n, "started_ms": started,
            "ended_ms": started + n * 1000, "duration_ms": n * 1000, "flagged": n % 2 == 0, "recorded": True,
            "discarded": False, "ended_by": "hang-up", "consent": [{"t_ms": 0, "kind": "announcement-end"}],
            "metrics": None, "caller_number": f"+1555000{n}", "caller_name": "Ada_100%", "caller_withheld": None,
            "manifest_sha256": f"{n:064x}", "prev": f"{n - 1:064x}", "segments": 1, "bytes": 10,
            "manifest_key": f"{device}/{n}/manifest.json", "stored_ms": 5_000 + n}
    return base | changes


def test_users_are_added_once_changed_and_listed(index: IndexTables) -> None:
    index.add_user("ann", "agent", "red", "hash-1", 10)
    with pytest.raises(DuplicateUser, match="exists already"):
        index.add_user("ann", "admin", None, "hash-2", 11)
    assert index.update_user("ann", team="blue", disabled=True)
    assert not index.update_user("nobody", disabled=True)
    with pytest.raises(ValueError, match="only"):
        index.update_user("ann", password="x")
    user = index.user("ann")
    assert (user["role"], user["team"], user["disabled"], user["audio_granted"]) == ("agent", "blue", True, False)
    assert [u["name"] for u in index.users()] == ["ann"] and index.user("nobody") is None


def test_sessions_are_found_by_hash_touched_and_ended(index: IndexTables) -> None:
    index.add_session("h1", "ann", "csrf-1", 100)
    index.add_session("h2", "ann", "csrf-2", 100)
    index.add_session("h3", "bob", "csrf-3", 100)
    index.touch_session("h3", 500)
    assert index.session("h1")["csrf"] == "csrf-1" and index.session("h3")["seen_ms"] == 500
    index.drop_session("h1")
    assert index.session("h1") is None
    assert index.drop_sessions(seen_before_ms=200) == 1  # h2: idle; h3 was seen at 500
    assert index.drop_sessions(name="bob") == 1
    with pytest.raises(ValueError):
        index.drop_sessions()


def test_failures_are_counted_in_a_window_and_cleared(index: IndexTables) -> None:
    for at in (10, 20, 30):
        index.add_failure("user", "ann", at)
    index.add_failure("address", "10.0.0.1", 5)
    assert index.failures("user", "ann", 15) == [20, 30]
    index.clear_failures("address", before_ms=6)
    index.clear_failures("user", "ann")
    assert index.failures("user", "ann", 0) == [] and index.failures("address", "10.0.0.1", 0) == []


def test_desk_assignments_run_until_the_next_one(index: IndexTables) -> None:
    index.assign_desk("desk-1", "ann", 100)
    index.assign_desk("desk-1", "bob", 300)
    index.assign_desk("desk-2", "bob", 50)
    index.assign_desk("desk-1", "cat", 300)  # the same moment again: replaced
    assert [(a["device_id"], a["agent"], a["from_ms"], a["until_ms"]) for a in index.desk_assignments()] == [
        ("desk-1", "ann", 100, 300), ("desk-1", "cat", 300, None), ("desk-2", "bob", 50, None)]


def test_saved_filters_belong_to_their_owner(index: IndexTables) -> None:
    index.save_filter("ann", "mine", "flagged=yes")
    index.save_filter("ann", "mine", "flagged=no")
    index.save_filter("bob", "his", "desk=desk-2")
    assert index.saved_filters("ann") == [{"name": "mine", "query": "flagged=no"}]
    index.drop_filter("ann", "mine")
    assert index.saved_filters("ann") == [] and len(index.saved_filters("bob")) == 1


def test_search_scopes_filters_sorts_and_pages(index: IndexTables) -> None:
    for n in range(1, 9):
        index.add_recording(call("desk-1" if n <= 4 else "desk-2", n))
    index.add_recording(call("desk-2", 9, consent=[{"t_ms": 5, "kind": "opt-out"}], caller_name="Zoë"))

    def ids(**kw: Any) -> list[int]:
        rows, total = index.search_recordings(Search(**kw))
        assert total >= len(rows)
        return [r["seq"] for r in rows]

    assert ids(descending=False) == list(range(1, 10))
    # desk-1 from call 3 on, and desk-2 until call 6 started: a scope of two spans
    scope = (Span("desk-1", 1_000_000 + 3 * 60_000), Span("desk-2", 0, 1_000_000 + 6 * 60_000))
    assert ids(spans=scope, descending=False) == [3, 4, 5]
    assert ids(spans=scope, within=(Span("desk-2", 0),), descending=False) == [5]
    assert ids(spans=()) == []
    assert ids(flagged=True, descending=False) == [2, 4, 6, 8]
    assert ids(min_duration_ms=3000, max_duration_ms=5000, descending=False) == [3, 4, 5]
    assert ids(caller="ada_1", descending=False) == list(range(1, 9))  # "_" is literal, not a wildcard
    assert ids(caller="a_100%", descending=False) == list(range(1, 9)) and ids(caller="x%") == []
    assert ids(caller="zo") == [9]
    assert ids(consent="opted-out") == [9] and ids(consent="announced", descending=False) == list(range(1, 9))
    assert ids(sort="duration", descending=True, limit=3) == [9, 8, 7]
    rows, total = index.search_recordings(Search(sort="started", descending=False, limit=4, offset=4))
    assert [r["seq"] for r in rows] == [5, 6, 7, 8] and total == 9
    assert ids(device_id="desk-1", since_ms=1_000_000 + 2 * 60_000, until_ms=1_000_000 + 4 * 60_000,
               descending=False) == [2, 3]
    assert ids(extra=(("seq = ?", (7,)),)) == [7]
