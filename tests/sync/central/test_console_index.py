"""The index's console tables on both backends (SQLite, PostgreSQL): users, sessions, failed logins, desks,
saved filters, and the calls search with its scope, filters, sorting and paging."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from linetap.sync.central import consoleindex
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


# -- the bounded count and the sort indexes (schema 11) --

def test_the_count_stops_past_the_cap_and_pages_past_it_still_come(index: IndexTables,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(consoleindex, "COUNT_CAP", 3)
    for n in range(1, 10):
        index.add_recording(call("desk-1", n))
    rows, total = index.search_recordings(Search(descending=False, limit=2))
    assert [r["seq"] for r in rows] == [1, 2] and total == 4  # 4: "more than 3"
    rows, total = index.search_recordings(Search(descending=False, limit=3, offset=6))
    assert [r["seq"] for r in rows] == [7, 8, 9] and total == 4  # past the cap: read all the same
    assert index.search_recordings(Search(offset=20)) == ([], 4)
    rows, total = index.search_recordings(Search(flagged=True))
    assert [r["seq"] for r in rows] == [8, 6, 4, 2] and total == 4  # four flagged: "more than 3" too
    assert [r["seq"] for r in index.search_recordings(Search(caller="+15550003"))[0]] == [3]
    assert index.search_recordings(Search(caller="+15550003"))[1] == 1
    assert index.search_recordings(Search(caller="nobody", offset=0)) == ([], 0)


def sort_key(sort: str, row: dict[str, Any]) -> tuple[Any, ...]:
    """The page's sort column as Python sees it: NULL lowest (SQLite's order, on both engines)."""
    value = row[consoleindex.SORTS[sort]]
    return (value is not None, value)


@pytest.mark.parametrize("probe", [2000, 0], ids=["sorted-here", "index-walk"])  # SQLite: few, or many
def test_every_sort_order_pages_as_a_full_sort_would(index: IndexTables, probe: int,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(consoleindex, "LEAD_PROBE", probe)
    made = []
    for n in range(1, 13):  # ties in duration, start and stored time across desks; callers missing
        row = call(f"desk-{n % 3}", n, duration_ms=(n % 4) * 1000, started_ms=1_000_000 + (n % 5) * 60_000,
                   stored_ms=5_000 + n % 2, caller_number=None if n % 4 == 0 else f"+1555{n % 6}")
        index.add_recording(row)
        made.append(row)
    index.mark_erased(str(uuid.UUID(int=5)), 9, "a test", "tombstones/5", device_id="desk-2")
    live = [r for r in made if r["seq"] != 5]
    for sort in consoleindex.SORTS:
        for descending in (False, True):
            # The tie-break stays ascending either way (device, then seq): a stable sort of rows in that order.
            ties = sorted(live, key=lambda r: (r["device_id"], r["seq"]))
            want = [(r["device_id"], r["seq"]) for r in sorted(ties, key=lambda r: sort_key(sort, r),
                                                                reverse=descending)]
            got = []
            for offset in range(0, 12, 5):
                rows, total = index.search_recordings(Search(sort=sort, descending=descending, limit=5,
                                                             offset=offset))
                got += [(r["device_id"], r["seq"]) for r in rows]
                assert total == 11
            assert got == want, (sort, descending)


@pytest.mark.parametrize("sort", sorted(consoleindex.SORTS))
def test_the_sort_indexes_serve_the_pages_order(sort: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    import psycopg

    from linetap.sync.central.pgindex import _dialect

    with SqliteIndex(tmp_path / "index.db") as lite:
        for n in range(1, 201):
            lite.add_recording(call(f"desk-{n % 7}", n))
        with lite._sql() as db:
            db.execute("ANALYZE")
    for descending in (False, True):
        search = Search(sort=sort, descending=descending)
        where, params = consoleindex.search_where(search)
        sql = f"SELECT * FROM recordings{where} ORDER BY {consoleindex.order_by(search)} LIMIT 50"
        with SqliteIndex(tmp_path / "index.db") as lite, lite._sql() as db:
            plan = " | ".join(r[3] for r in db.execute("EXPLAIN QUERY PLAN " + sql, params))
        assert "USING INDEX" in plan and "TEMP B-TREE FOR ORDER BY" not in plan, plan  # its right part may sort
        url = request.getfixturevalue("pg_url")
        with PgIndex(url), psycopg.connect(url, autocommit=True) as db:
            for off in ("seqscan", "bitmapscan", "sort"):  # a tiny table: make a full sort the dear way
                db.execute(f"SET enable_{off} = off")
            plan = " | ".join(r[0] for r in db.execute("EXPLAIN " + _dialect(sql), params))
        assert f"recordings_live_{'device' if sort == 'device' else sort}" in plan, plan


def test_postgresql_plans_each_search_for_its_own_values(request: pytest.FixtureRequest) -> None:
    """Never a prepared statement (psycopg prepares one after five runs; its generic plan, made without
    the values, would take no trigram index for a caller's pattern)."""
    with PgIndex(request.getfixturevalue("pg_url")) as index, index.pinned():
        index.add_recording(call("desk-1", 1))
        for _ in range(8):
            assert index.search_recordings(Search(caller="5550001"))[1] == 1
        with index._sql() as db:
            prepared = [r[0] for r in db.execute("SELECT statement FROM pg_prepared_statements")]
    assert not [sql for sql in prepared if "FROM recordings" in sql], prepared


# -- QA figures as numbers, and the caller search's trigram index (SQLite) --

def metrics(near: str, far: str, silence: str, hold: list[list[str]] | None = None) -> dict[str, Any]:
    """QA metrics as a box's manifest carries them: decimal strings."""
    return {"talk_s": {"near": near, "far": far}, "silence_share": silence, "overtalk_share": "0.05",
            "hold_spans": hold or []}


@pytest.mark.parametrize("probe", [2000, 0], ids=["index-leads", "scan"])  # SQLite: a figure's index or not
def test_qa_figures_are_kept_as_numbers_and_searched_by_range(index: IndexTables, probe: int,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from linetap.sync.central import consoleindex

    monkeypatch.setattr(consoleindex, "LEAD_PROBE", probe)
    index.add_recording(call("desk-1", 1, metrics=metrics("30", "70", "0.1", [["5.5", "35.5"]])))  # talk 30 %
    index.add_recording(call("desk-1", 2, metrics=metrics("45", "55", "0.25")))
    index.add_recording(call("desk-1", 3, metrics=metrics("60", "40", "0.4", [["0", "100"], ["200", "290"]])))
    index.add_recording(call("desk-1", 4, metrics=None))
    hostile = {"talk_s": {"near": "NaN", "far": "1e999"}, "silence_share": "7", "overtalk_share": [1],
               "hold_spans": [["9", "3"]]}
    index.add_recording(call("desk-1", 5, metrics=hostile))  # nothing makes sense: no figures at all

    def ids(name: str, low: float | None, high: float | None) -> list[int]:
        rows, total = index.search_recordings(Search(figure=(name, low, high), descending=False))
        assert total == len(rows)
        return [r["seq"] for r in rows]

    assert ids("talk_ratio", 0.3, 0.45) == [1, 2]  # both ends included
    assert ids("talk_ratio", 0.46, None) == [3] and ids("talk_ratio", None, 0.29) == []
    assert ids("silence_share", 0.2, 1.0) == [2, 3]
    assert ids("hold_s", 60, None) == [3] and ids("hold_s", 0, 0) == [2]  # 30 s; 190 s; none: 0 s
    assert ids("overtalk_share", None, None) == [1, 2, 3]  # any value: calls that have one
    row = index.recording(str(uuid.UUID(int=1)), "desk-1")
    assert (row["qa_talk_ratio"], row["qa_hold_s"], row["qa_overtalk_share"]) == (0.3, 30.0, 0.05)
    assert index.recording(str(uuid.UUID(int=5)), "desk-1")["qa_silence_share"] is None
    index.mark_erased(str(uuid.UUID(int=3)), 9, "asked", "tomb", device_id="desk-1")
    assert ids("talk_ratio", 0.46, None) == []
    with pytest.raises(ValueError, match="no QA figure"):
        index.search_recordings(Search(figure=("talk_ratio; DROP TABLE recordings", None, None)))


def test_caller_search_finds_the_same_calls_with_and_without_the_trigram_index(
        index: IndexTables, monkeypatch: pytest.MonkeyPatch) -> None:
    from linetap.sync.central import consoleindex

    names = ["Ada Lovelace", "ADA_100%", 'Quote "q" Co', "Zoë Ørsted", None, "back\\slash"]
    for n in range(1, 41):
        index.add_recording(call("desk-1", n, caller_number=None if n % 7 == 0 else f"+44 20 7946 {n:04d}",
                                 caller_name=names[n % len(names)]))
    needles = ["ada", "7946 001", "DA_1", "0%", '"q"', "zoë", "ørs", "h\\s", "20 7", "+44", "4", "00",
               "nobody", "946 0040", "lovelace ada"]

    def found(needle: str) -> tuple[list[int], int]:
        rows, total = index.search_recordings(Search(caller=needle, descending=False, limit=500))
        assert [r["seq"] for r in index.recordings(caller=needle)] == [r["seq"] for r in rows]  # `list --caller`
        return [r["seq"] for r in rows], total

    led = {needle: found(needle) for needle in needles}
    monkeypatch.setattr(consoleindex, "LEAD_PROBE", 0)  # the LIKE alone, as without the index
    assert {needle: found(needle) for needle in needles} == led
    assert led["7946 001"][0] == [10, 11, 12, 13, 15, 16, 17, 18, 19] and led["nobody"] == ([], 0)  # 14: none
    assert led["ada"][1] == 13 and led["zoë"][1] == 7 and led["0%"][1] == 7  # "Ada ...", "ADA_100%"; "Zoë ..."


def test_the_trigram_index_follows_callers_changed_and_erased(tmp_path: Path) -> None:
    with SqliteIndex(tmp_path / "index.db") as index:
        for n in range(1, 4):
            index.add_recording(call("desk-1", n, caller_number=f"+1555000{n}", caller_name=f"Name {n}"))
        index.mark_erased(str(uuid.UUID(int=2)), 9, "asked", "tomb", device_id="desk-1")
        with index._sql() as db:
            db.execute("UPDATE recordings SET caller_name = 'Renamed' WHERE seq = 3")
            fts = {tuple(r) for r in db.execute("SELECT rowid, caller_number, caller_name FROM caller_fts")}
            assert consoleindex_probe(db, "renamed") and not consoleindex_probe(db, "Name 3")
            db.execute("DELETE FROM recordings WHERE seq = 1")
            assert db.execute("SELECT COUNT(*) FROM caller_fts").fetchone()[0] == 1
            assert db.execute("SELECT COUNT(*) FROM caller_keys").fetchone()[0] == 2  # the erased one's stays
        assert [n for _, n, _ in sorted(fts)] == ["+15550001", "+15550003"]


def consoleindex_probe(db: Any, text: str) -> bool:
    found = db.execute("SELECT COUNT(*) FROM caller_fts WHERE caller_fts MATCH ?", ('"' + text + '"',))
    return found.fetchone()[0] > 0


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_an_index_of_schema_9_gains_the_figures_the_caller_index_and_the_sort_indexes(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    import sqlite3

    import psycopg

    from linetap.sync.central.figuresindex import COLUMNS

    location = str(tmp_path / "index.db") if kind == "sqlite" else request.getfixturevalue("pg_url")
    opened = lambda: SqliteIndex(Path(location)) if kind == "sqlite" else PgIndex(location)  # noqa: E731
    with opened() as index:
        index.add_recording(call("desk-1", 1, metrics=metrics("30", "70", "0.1"), caller_name="Ada Lovelace"))
        index.add_recording(call("desk-1", 2, metrics=metrics("45", "55", "0.25"), caller_name="Bob"))
        index.add_recording(call("desk-1", 3, metrics={"talk_s": "garbage"}, caller_name="Cy"))
    # Make it what schema 9 wrote: no figure columns (nor their indexes), no trigram table or triggers.
    if kind == "sqlite":
        with sqlite3.connect(location) as db:
            for statement in ("DROP TRIGGER caller_fts_insert", "DROP TRIGGER caller_fts_update",
                              "DROP TRIGGER caller_fts_delete", "DROP TABLE caller_fts", "DROP TABLE caller_keys",
                              *(f"DROP INDEX recordings_{c}" for c in COLUMNS.values()),
                              "DROP INDEX recordings_live_duration", "DROP INDEX recordings_live_caller",
                              *(f"ALTER TABLE recordings DROP COLUMN {c}" for c in COLUMNS.values()),
                              "PRAGMA user_version = 9"):
                db.execute(statement)
    else:
        with psycopg.connect(location, autocommit=True) as db:
            for column in COLUMNS.values():
                db.execute(f"ALTER TABLE recordings DROP COLUMN {column}")
            for name in ("started", "duration", "device", "caller", "stored"):
                db.execute(f"DROP INDEX recordings_live_{name}")
            db.execute("DELETE FROM schema_version")
            db.execute("INSERT INTO schema_version VALUES (9, 0)")
    with opened() as index:
        rows, _ = index.search_recordings(Search(figure=("talk_ratio", 0.4, 0.5)))
        assert [r["seq"] for r in rows] == [2]
        assert index.recording(str(uuid.UUID(int=3)), "desk-1")["qa_talk_ratio"] is None
        assert [r["seq"] for r in index.search_recordings(Search(caller="lovelace"))[0]] == [1]
        index.add_recording(call("desk-1", 4, caller_name="Another Lovelace"))
        assert index.search_recordings(Search(caller="lovelace"))[1] == 2
        with index._sql() as db:  # schema 11's sort indexes came with the steps
            if kind == "sqlite":
                assert db.execute("SELECT COUNT(*) FROM caller_fts").fetchone()[0] == 4
                made = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
                assert {"recordings_live_duration", "recordings_live_caller"} <= made
            else:
                made = {r[0] for r in db.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'recordings'")}
                assert {f"recordings_live_{n}" for n in ("started", "duration", "device", "caller", "stored")} <= made
