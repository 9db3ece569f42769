"""Whole-table copy statements (migrate-store's) behave alike on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from test_index_contract import SHA_A, backend, index, rid, row  # noqa: F401  (fixtures of both backends)

from linetap.sync.central.copytables import TABLES, table
from linetap.sync.central.index import IndexTables


def test_tables_are_the_schemas_in_order_with_their_keys() -> None:
    names = [t.name for t in TABLES]
    assert names[:4] == ["devices", "objects", "staged", "recordings"] and "access_log" in names
    assert table("objects").key == ("device_id", "recording_id", "name")
    assert table("receipts").key == ("pos",) and table("problems").key == ()
    with pytest.raises(KeyError):
        table("devices; DROP TABLE objects")


def test_pages_by_composite_key_and_inserts_once(index: IndexTables) -> None:
    for n in (3, 1, 2):
        for device in ("b", "a"):
            index.claim_object(device, rid(n), "seg/0", SHA_A, 10 * n, f"{device}/{n}/0", 5)
    index.mark_stored("a", rid(1), "seg/0", 6)
    assert index.stored_totals() == (1, 10)
    first = index.table_page("objects", None, 4)
    assert [(r["device_id"], r["recording_id"]) for r in first] == [("a", rid(1)), ("a", rid(2)), ("a", rid(3)),
                                                                    ("b", rid(1))]
    after = tuple(first[-1][c] for c in table("objects").key)
    rest = index.table_page("objects", after, 4)
    assert [(r["device_id"], r["recording_id"]) for r in rest] == [("b", rid(2)), ("b", rid(3))]
    assert index.insert_rows("objects", first) == 0  # all there: kept, nothing doubled
    assert index.count_rows("objects") == 6


def test_copy_into_another_index_is_equal_and_idempotent(index: IndexTables, tmp_path) -> None:
    from linetap.sync.central.index import SqliteIndex

    index.enroll("desk-1", "key", 1)
    index.add_recording(row("desk-1", 1))
    index.add_problem("desk-1", None, None, "chain-break", "b", 9)
    index.add_problem("desk-1", rid(1), 1, "chain-break", "a", 9)
    index.add_problem("desk-1", rid(1), 1, "chain-break", "a", 9)  # the same twice: both kept
    with SqliteIndex(tmp_path / "copy.db") as other:
        for name in ("devices", "recordings"):
            page = index.table_page(name, None, 10)
            assert other.insert_rows(name, page) == len(page) == 1
            assert other.insert_rows(name, page) == 0
            assert other.table_page(name, None, 10) == page
        problems = index.table_page("problems", None, 2)
        assert [p["detail"] for p in problems] == ["b", "a"]  # by every column in order, NULLs first
        other.insert_rows("problems", problems)
        rest = index.table_page("problems", None, 2, offset=other.count_rows("problems"))
        assert [(p["detail"], p["seq"]) for p in rest] == [("a", 1)]
        assert other.insert_rows("problems", rest) == 1 and other.count_rows("problems") == 3
        assert other.recording(rid(1), "desk-1") == index.recording(rid(1), "desk-1")


def test_a_row_in_every_table_copies_from_sqlite_to_postgresql_unchanged(tmp_path, pg_url: str) -> None:
    """Every table the schema has (later ones too): a row of each column's type, edge values included."""
    from linetap.sync.central.index import SqliteIndex
    from linetap.sync.central.pgindex import PgIndex

    values = {"TEXT": "ü'%?\\x", "INTEGER": -(2 ** 63), "BIGINT": 2 ** 63 - 1, "BLOB": b"\x00\xff",
              "DOUBLE PRECISION": 0.1}
    with SqliteIndex(tmp_path / "index.db") as source, PgIndex(pg_url) as target:
        with source._sql() as db:
            for t in TABLES:
                columns = [(c["name"], c["type"]) for c in db.execute(f"PRAGMA table_info({t.name})")]
                db.execute(f"INSERT INTO {t.name} ({', '.join(n for n, _ in columns)}) VALUES "
                           f"({', '.join('?' * len(columns))})", [values[kind] for _, kind in columns])
        for t in TABLES:
            rows = source.table_page(t.name, None, 10)
            assert len(rows) == 1 and target.insert_rows(t.name, rows) == 1, t.name
            assert target.table_page(t.name, None, 10) == rows, t.name
