"""``list`` and ``verify`` queries over a million recordings, SQLite against PostgreSQL.

The same million rows (500 devices, 2000 calls each, one every 30 s across
the fleet for about a year; a tenth without a caller number, a third with a
name, one in twenty flagged, one in a thousand erased) are made in each
backend by one recursive SQL statement, then every query ``linetap-central
list`` can make is run through the index's own method (rows built, JSON
columns parsed), with varying arguments. Figures are milliseconds, p50 and
p95 over the repeats, with the number of rows each returned. The peer is the
other backend in the same run. The unfiltered list returns every row and is
timed once, as are two whole-table statements of other jobs (the chain heads
a trusted timestamp commits to, and the recordings without a receipt that
``serve`` looks for at start).

PostgreSQL is a throwaway cluster (:class:`~linetap.sync.central.localpg.LocalPostgres`);
the plans it chose are printed with ``EXPLAIN ANALYZE`` (abridged) for the report.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from linetap.sync.central.index import IndexTables, SqliteIndex

ROWS = 1_000_000
DEVICES = 500
START_MS = 1_767_225_600_000  # 2026-01-01
STEP_MS = 30_000
DAY_MS = 86_400_000
REPEATS = 30

# One statement both SQL dialects run: a recursive series and arithmetic on it.
LOAD = f"""
WITH RECURSIVE n(i) AS (SELECT CAST(0 AS BIGINT) UNION ALL SELECT i + 1 FROM n WHERE i < {ROWS - 1})
INSERT INTO recordings (recording_id, device_id, seq, started_ms, ended_ms, duration_ms, flagged, recorded,
    discarded, ended_by, consent, metrics, caller_number, caller_name, caller_withheld, manifest_sha256, prev,
    segments, bytes, manifest_key, stored_ms, erased_ms)
SELECT 'r' || i, 'box-' || (i % {DEVICES}), i / {DEVICES} + 1, {START_MS} + i * {STEP_MS},
    {START_MS} + i * {STEP_MS} + (i * 7) % 600000, (i * 7) % 600000,
    CASE WHEN i % 20 = 0 THEN 1 ELSE 0 END, 1, 0, 'hangup', '[]', NULL,
    CASE WHEN i % 10 = 0 THEN NULL ELSE '+1555' || ((i * 7919) % 1000003) END,
    CASE WHEN i % 3 = 0 THEN 'Name ' || (i % 5000) ELSE NULL END, NULL, 'h' || i, 'p' || i, 3, 30000,
    'k' || i, {START_MS} + i * {STEP_MS} + 700000, CASE WHEN i % 1000 = 0 THEN {START_MS} ELSE NULL END
FROM n
"""


def _queries() -> dict[str, Callable[[IndexTables, int], list[dict[str, Any]]]]:
    def day(k: int) -> int:
        return START_MS + (k * 11 % 300) * DAY_MS
    return {
        "list --device": lambda ix, k: ix.recordings(device_id=f"box-{k * 37 % DEVICES}"),
        "list --since --until (a day)": lambda ix, k: ix.recordings(since_ms=day(k), until_ms=day(k) + DAY_MS),
        "list --device --since --until (a week)": lambda ix, k: ix.recordings(
            device_id=f"box-{k * 37 % DEVICES}", since_ms=day(k), until_ms=day(k) + 7 * DAY_MS),
        "list --caller": lambda ix, k: ix.recordings(caller=str(100000 + k * 7919 % 800000)),
        "list --caller --since --until (a day)": lambda ix, k: ix.recordings(
            caller="555", since_ms=day(k), until_ms=day(k) + DAY_MS),
        "list --flagged --since --until (a day)": lambda ix, k: ix.recordings(
            flagged=True, since_ms=day(k), until_ms=day(k) + DAY_MS),
        "list --min-duration --since --until (a day)": lambda ix, k: ix.recordings(
            min_duration_ms=500_000, since_ms=day(k), until_ms=day(k) + DAY_MS),
        "verify: device_recordings": lambda ix, k: ix.device_recordings(f"box-{k * 37 % DEVICES}"),
        "verify: recordings_at": lambda ix, k: ix.recordings_at(f"box-{k * 37 % DEVICES}", 1 + k * 53 % 2000),
        "list (everything)": lambda ix, k: ix.recordings(),
        "timestamps: chain_heads": lambda ix, k: ix.chain_heads(),
        "serve start: unreceipted": lambda ix, k: ix.unreceipted(),
    }


ONCE = ("list (everything)", "timestamps: chain_heads", "serve start: unreceipted")  # timed once: seconds each


def _time(index: IndexTables) -> dict[str, Any]:
    out = {}
    for name, query in _queries().items():
        repeats = 1 if name in ONCE else REPEATS
        times, rows = [], 0
        if name not in ONCE:
            query(index, 0)  # warm the cache
        for k in range(repeats):
            t0 = time.perf_counter()
            rows = len(query(index, k + 1))
            times.append((time.perf_counter() - t0) * 1000)
        times.sort()
        out[name] = {"p50_ms": round(statistics.median(times), 2),
                     "p95_ms": round(times[min(len(times) - 1, int(0.95 * len(times)))], 2), "rows_last": rows}
    return out


def _load_sqlite(folder: Path) -> tuple[SqliteIndex, float]:
    index = SqliteIndex(folder / "index.db")
    t0 = time.perf_counter()
    with index._sql() as db:
        db.execute("BEGIN IMMEDIATE")
        db.execute(LOAD)
        db.execute("COMMIT")
        db.execute("ANALYZE")
    return index, time.perf_counter() - t0


def _load_postgres(url: str) -> tuple[Any, float]:
    import psycopg

    from linetap.sync.central.pgindex import PgIndex
    index = PgIndex(url)
    t0 = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as db:
        db.execute(LOAD)
        db.execute("VACUUM ANALYZE recordings")
    return index, time.perf_counter() - t0


def plans(url: str) -> dict[str, list[str]]:
    """EXPLAIN ANALYZE of each ``list`` query's SQL as the index sends it (first lines of each plan)."""
    import psycopg
    day = START_MS + 40 * DAY_MS
    sqls = {
        "list --device": ("device_id = %s", ["box-7"]),
        "list --since --until (a day)": ("started_ms >= %s AND started_ms < %s", [day, day + DAY_MS]),
        "list --device --since --until (a week)": ("device_id = %s AND started_ms >= %s AND started_ms < %s",
                                                   ["box-7", day, day + 7 * DAY_MS]),
        "list --caller": ("(LOWER(caller_number) LIKE %s ESCAPE '\\' OR LOWER(caller_name) LIKE %s ESCAPE '\\')",
                          ["%123456%", "%123456%"]),
    }
    out = {}
    with psycopg.connect(url, autocommit=True) as db:
        for name, (where, params) in sqls.items():
            sql = (f"EXPLAIN (ANALYZE, BUFFERS OFF) SELECT * FROM recordings WHERE {where} AND erased_ms IS NULL "
                   "ORDER BY started_ms NULLS FIRST, device_id, seq")
            out[name] = [r[0] for r in db.execute(sql, params)][:8]
        out["verify: device_recordings"] = [r[0] for r in db.execute(
            "EXPLAIN ANALYZE SELECT * FROM recordings WHERE device_id = %s ORDER BY seq, stored_ms", ["box-7"])][:6]
    return out


def run() -> dict[str, Any]:
    from linetap.sync.central.localpg import LocalPostgres

    with tempfile.TemporaryDirectory(prefix="linetap-bench-index-") as tmp, LocalPostgres(Path(tmp) / "pg") as pg:
        sqlite, sqlite_load = _load_sqlite(Path(tmp))
        pgindex, pg_load = _load_postgres(pg.url)
        try:
            figures = {"rows": ROWS, "devices": DEVICES, "repeats": REPEATS,
                       "load_s": {"sqlite": round(sqlite_load, 1), "postgres": round(pg_load, 1)},
                       "sqlite": _time(sqlite), "postgres": _time(pgindex), "postgres_plans": plans(pg.url)}
        finally:
            sqlite.close()
            pgindex.close()
    return figures
