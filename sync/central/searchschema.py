"""The calls search's own indexes, per engine: SQLite's caller trigram table, and the sort orders.

:mod:`~linetap.sync.central.indexschema` (SQLite) and
:mod:`~linetap.sync.central.pgschema` (PostgreSQL) create these with the rest
of the schema; :meth:`~linetap.sync.central.consoleindex.ConsoleTables.search_recordings`
is the query they serve.

- The caller search's trigram index (schema 10): an FTS5 trigram table on
  SQLite (:data:`CALLER_TRIGRAM`), pg_trgm indexes on PostgreSQL (``pgschema``).
  Its rows are keyed by ``caller_keys.id`` (recordings' own rowids may change in
  a VACUUM) and kept by triggers, so every writer of recordings (ingest,
  erasure, migrate-store, a bulk load) keeps it without knowing of it.
- The sort orders the calls page offers (schema 11): each sort column of
  ``consoleindex.SORTS`` with the tie-break ``device_id, seq``, on live rows
  only (``erased_ms IS NULL``, which the page always asks for), so a page of the
  newest, longest or by caller is read in order from an index and stops after
  its rows instead of sorting every match. SQLite reads a one-column index
  backwards as well as forwards and sorts each run of equal values by the
  tie-break; it had indexes on ``started_ms``, ``stored_ms`` and ``(device_id,
  seq)`` already and gets duration and caller (:data:`SQLITE_SORT_INDEXES`).
  PostgreSQL matches an ``ORDER BY`` to an index only with the same NULLs
  placement: the page sorts ``ASC NULLS FIRST`` / ``DESC NULLS LAST`` (SQLite's
  order), which neither way of reading a default index gives, so each column
  has an index ``NULLS FIRST`` (:data:`PG_SORT_INDEXES`): read forwards for
  ascending, backwards for descending (the tie-break then by an incremental
  sort of each run of equal values).
"""

from __future__ import annotations

_CALLER_KEY = "(SELECT id FROM caller_keys WHERE device_id = {0}.device_id AND recording_id = {0}.recording_id)"
_CALLER_ADD = (
    "INSERT OR IGNORE INTO caller_keys (device_id, recording_id) SELECT NEW.device_id, NEW.recording_id "
    "WHERE NEW.caller_number IS NOT NULL OR NEW.caller_name IS NOT NULL; "
    f"INSERT INTO caller_fts (rowid, caller_number, caller_name) SELECT {_CALLER_KEY.format('NEW')}, "
    "NEW.caller_number, NEW.caller_name WHERE NEW.caller_number IS NOT NULL OR NEW.caller_name IS NOT NULL;")
_CALLER_DROP = f"DELETE FROM caller_fts WHERE rowid = {_CALLER_KEY.format('OLD')};"

CALLER_TRIGRAM = (
    "CREATE TABLE IF NOT EXISTS caller_keys (id INTEGER PRIMARY KEY, device_id TEXT NOT NULL, "
    "recording_id TEXT NOT NULL, UNIQUE (device_id, recording_id))",
    "CREATE VIRTUAL TABLE IF NOT EXISTS caller_fts USING fts5(caller_number, caller_name, tokenize = 'trigram')",
    f"CREATE TRIGGER IF NOT EXISTS caller_fts_insert AFTER INSERT ON recordings BEGIN {_CALLER_ADD} END",
    "CREATE TRIGGER IF NOT EXISTS caller_fts_update AFTER UPDATE OF caller_number, caller_name ON recordings "
    f"BEGIN {_CALLER_DROP} {_CALLER_ADD} END",
    f"CREATE TRIGGER IF NOT EXISTS caller_fts_delete AFTER DELETE ON recordings BEGIN {_CALLER_DROP} "
    "DELETE FROM caller_keys WHERE device_id = OLD.device_id AND recording_id = OLD.recording_id; END",
)

_LIVE = "WHERE erased_ms IS NULL"
SQLITE_SORT_INDEXES = (
    f"CREATE INDEX IF NOT EXISTS recordings_live_duration ON recordings (duration_ms) {_LIVE}",
    f"CREATE INDEX IF NOT EXISTS recordings_live_caller ON recordings (caller_number) {_LIVE}",
)
PG_SORT_INDEXES = tuple(
    f"CREATE INDEX IF NOT EXISTS recordings_live_{name} ON recordings ({column} NULLS FIRST{tie}) {_LIVE}"
    for name, column, tie in (("started", "started_ms", ", device_id, seq"),
                              ("duration", "duration_ms", ", device_id, seq"),
                              ("device", "device_id", ", seq"),
                              ("caller", "caller_number", ", device_id, seq"),
                              ("stored", "stored_ms", ", device_id, seq")))
