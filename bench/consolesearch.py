"""The calls page's searches over 100,000 recordings, server time, SQLite against PostgreSQL.

The same 100,000 recordings (``bench/indexlist.py``'s rows, with QA metrics
as a box sends them, turned into the figure columns by ``fill_figures``) are
made in each backend; every kind of search the calls page offers (the
queries of :data:`QUERIES`, read by the page's own parser, as an admin sees
them: no scope) is run through ``search_recordings``, the page's one call to
the index. Figures are milliseconds, p50 and p95 over the repeats, with the
total the page shows. The peer is the other backend in the same run; each
kind also says whether both backends returned the same page and total.
``bench/console.py`` times the same queries over HTTP.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from bench import indexlist
from linetap.sync.central.figuresindex import fill_figures

SEARCH_ROWS = 100_000
REPEATS = 20
# QA metrics as a box's manifest carries them (decimal strings), varied by the call's number k (its start
# over the load's 30 s step): talk ratios spread over 0..1, silence 0.1-0.99, hold 0.5-299.5 s.
METRICS = ("""'{"talk_s": {"near": "' || ((started_ms / 30000) % 97) || '.5", "far": "' || """
           """((started_ms / 30000 * 13) % 89) || '.25"}, "silence_share": "0.' || """
           """(100 + (started_ms / 30000 * 7) % 900) || '", "overtalk_share": "0.0' || ((started_ms / 30000) % 10) """
           """|| '", "hold_spans": [["1.5", "' || (2 + (started_ms / 30000) % 300) || '"]]}'""")
# Every kind of search the calls page offers: name -> its path and query string.
QUERIES = {"newest page": "/calls", "oldest first": "/calls?dir=asc", "one desk": "/calls?desk=box-17",
           "caller": "/calls?caller=555123", "flagged, longest first": "/calls?flagged=yes&sort=duration&dir=desc",
           "caller, broad": "/calls?caller=%2B1555", "caller, 2 characters": "/calls?caller=55",
           "QA metric: talk ratio 40-60 %": "/calls?metric=talk_ratio&min=40&max=60",
           "QA metric: hold 290 s or more": "/calls?metric=hold_s&min=290",
           "consent: announced": "/calls?consent=announced", "a day, by desk": "/calls?since=2026-01-10&"
           "until=2026-01-11&sort=device", "shortest first": "/calls?sort=duration&dir=asc",
           "caller order": "/calls?sort=caller", "stored, newest": "/calls?sort=stored",
           "page 40 of the newest": "/calls?page=40"}
LOAD = indexlist.LOAD.replace(f"i < {indexlist.ROWS - 1}", f"i < {SEARCH_ROWS - 1}")


def load(db: Any) -> None:
    """The rows and their metrics, in one transaction of ``db`` (sqlite3, or pgindex's ``PgConnection``)."""
    db.execute(LOAD)
    db.execute(f"UPDATE recordings SET metrics = {METRICS} WHERE device_id LIKE 'box-%'")
    fill_figures(db)


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"p50_ms": round(statistics.median(ordered) * 1000, 2),
            "p95_ms": round(ordered[max(0, round(0.95 * len(ordered)) - 1)] * 1000, 2)}


def search(path: str) -> Any:
    """The index search the calls page makes of ``path`` for an admin (every desk)."""
    from linetap.sync.central.consoleindex import Search
    from linetap.sync.central.web.callquery import parse

    query = parse(dict(parse_qsl(path.partition("?")[2])))
    if query.problems:
        raise RuntimeError(f"the calls page refuses {path}: {query.problems}")
    return Search(limit=query.size, offset=(query.page - 1) * query.size, **query.filters)


def _time(index: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    out, pages = {}, {}
    for name, path in QUERIES.items():
        wanted = search(path)
        rows, total = index.search_recordings(wanted)  # warm the cache
        times = []
        for _ in range(REPEATS):
            t0 = time.perf_counter()
            index.search_recordings(wanted)
            times.append(time.perf_counter() - t0)
        out[name] = {**percentiles(times), "total": total}
        pages[name] = ([(r["device_id"], r["recording_id"]) for r in rows], total)
    return out, pages


def run() -> dict[str, Any]:
    import psycopg

    from linetap.sync.central.index import SqliteIndex
    from linetap.sync.central.localpg import LocalPostgres
    from linetap.sync.central.pgindex import PgConnection, PgIndex

    with tempfile.TemporaryDirectory(prefix="linetap-bench-search-") as tmp, LocalPostgres(Path(tmp) / "pg") as pg:
        sqlite, pgindex = SqliteIndex(Path(tmp) / "index.db"), PgIndex(pg.url)
        try:
            with sqlite._sql() as db:
                db.execute("BEGIN IMMEDIATE")
                load(db)
                db.execute("COMMIT")
                db.execute("ANALYZE")
            with psycopg.connect(pg.url) as conn:
                load(PgConnection(conn))
            with psycopg.connect(pg.url, autocommit=True) as conn:
                # The metrics and figures were written by updates, which leave PostgreSQL two dead versions
                # of every row; ingest writes a row once, with its figures: compact the table to that.
                conn.execute("VACUUM FULL ANALYZE recordings")
            lite, lite_pages = _time(sqlite)
            post, post_pages = _time(pgindex)
        finally:
            sqlite.close()
            pgindex.close()
    same = {name: lite_pages[name] == post_pages[name] for name in QUERIES}
    return {"rows": SEARCH_ROWS, "repeats": REPEATS, "sqlite": lite, "postgres": post, "same_page_and_total": same}
