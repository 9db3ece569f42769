"""Whole-table statements for copying an index into another: the index's tables in schema order, paged.

``migrate-store`` (:mod:`~linetap.sync.central.migratestore`) reads every
table of the embedded index and writes it into the target index with these,
so both backends run the same statements. :data:`TABLES` is read from
:data:`~linetap.sync.central.indexschema.SCHEMA` itself: a table added there
is copied without a change here, in the order the schema creates it (devices
before the objects their manifests are checked with, recordings before the
receipts that sign them).

Paging is by primary key (``(a, b) > (?, ?)``, row values both engines
order alike: PostgreSQL's text is ``COLLATE "C"``, SQLite's default is by
bytes). A table without one (``problems``) is ordered by every column and
paged by offset; the copy of such a table is resumed by its count of rows.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from linetap.sync.central.indexschema import SCHEMA


@dataclass(frozen=True)
class Table:
    """One table of the index: its name and primary key columns (empty: none)."""

    name: str
    key: tuple[str, ...]


def _tables(schema: str) -> tuple[Table, ...]:
    found = []
    for name, body in re.findall(r"CREATE TABLE IF NOT EXISTS (\w+) \((.*?)\n\);", schema, re.S):
        composite = re.search(r"PRIMARY KEY \(([^)]*)\)", body)
        if composite:
            key = tuple(c.strip() for c in composite.group(1).split(","))
        else:
            single = re.search(r"^\s*(\w+) \w+ PRIMARY KEY", body, re.M)
            key = (single.group(1),) if single else ()
        found.append(Table(name, key))
    return tuple(found)


TABLES = _tables(SCHEMA)
_NAMES = {t.name: t for t in TABLES}


def table(name: str) -> Table:
    """The table of that name; ``KeyError`` for a name the schema does not create (never put in SQL)."""
    return _NAMES[name]


class CopyIndex(Protocol):
    """The whole-table part of :class:`~linetap.sync.central.index.Index` (migrate-store's)."""

    def count_rows(self, name: str) -> int: ...
    def stored_totals(self) -> tuple[int, int]: ...
    def table_page(self, name: str, after: Sequence[Any] | None, limit: int, *,
                   offset: int = 0) -> list[dict[str, Any]]: ...
    def insert_rows(self, name: str, rows: Sequence[dict[str, Any]]) -> int: ...


class CopyTables:
    """Paged reads and idempotent batch writes of whole tables, on the index's connection (``_sql``)."""

    def _sql(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError

    def count_rows(self, name: str) -> int:
        """How many rows the table holds."""
        with self._sql() as db:
            return int(db.execute(f"SELECT COUNT(*) FROM {table(name).name}").fetchone()[0])

    def stored_totals(self) -> tuple[int, int]:
        """(objects, bytes) of the stored objects (claimed and written)."""
        with self._sql() as db:
            row = db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM objects WHERE stored_ms IS NOT NULL"
                             ).fetchone()
        return int(row[0]), int(row[1])

    def table_page(self, name: str, after: Sequence[Any] | None, limit: int, *,
                   offset: int = 0) -> list[dict[str, Any]]:
        """Up to ``limit`` rows in key order after the key ``after`` (None: from the first); a table
        without a key is ordered by every column and read from ``offset``."""
        t = table(name)
        with self._sql() as db:
            if not t.key:
                columns = [c[0] for c in db.execute(f"SELECT * FROM {t.name} LIMIT 0").description]
                order = ", ".join(f"{c} NULLS FIRST" for c in columns)
                rows = db.execute(f"SELECT * FROM {t.name} ORDER BY {order} LIMIT ? OFFSET ?", (limit, offset))
                return [dict(r) for r in rows]
            keys = ", ".join(t.key)
            if after is None:
                rows = db.execute(f"SELECT * FROM {t.name} ORDER BY {keys} LIMIT ?", (limit,))
            else:
                marks = ", ".join("?" * len(t.key))
                rows = db.execute(f"SELECT * FROM {t.name} WHERE ({keys}) > ({marks}) ORDER BY {keys} LIMIT ?",
                                  (*after, limit))
            return [dict(r) for r in rows]

    def insert_rows(self, name: str, rows: Sequence[dict[str, Any]]) -> int:
        """Insert the rows (each with the same columns) in one write transaction, keeping any row
        already there under the same key; returns how many were new."""
        t = table(name)
        if not rows:
            return 0
        columns = list(rows[0])
        sql = (f"INSERT INTO {t.name} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
               + (" ON CONFLICT DO NOTHING" if t.key else ""))
        inserted = 0
        with self._sql() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                for row in rows:
                    inserted += db.execute(sql, [row[c] for c in columns]).rowcount
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        return inserted
