"""The central index's PostgreSQL schema and its versioned migrations.

The tables are :mod:`~linetap.sync.central.indexschema`'s, written once there
and translated here word by word: ``BLOB`` becomes ``BYTEA``, ``INTEGER``
becomes ``BIGINT`` (SQLite's integers are 64-bit; PostgreSQL's ``INTEGER`` is
32), and ``TEXT`` is ``TEXT COLLATE "C"``, so text sorts and compares by its
bytes, as SQLite's default collation does, whatever locale the database was
made with (and B-tree indexes serve ``LIKE`` prefixes). JSON columns stay
TEXT: they hold a box's manifest members as sent, and ``jsonb`` would refuse
the ``\\u0000`` escape that JSON allows. Version numbers are SQLite's
(:data:`SCHEMA_VERSION`): the same number means the same tables on both.

PostgreSQL gets some indexes of its own (:data:`PG_INDEXES`), chosen from the
query plans of ``list`` and ``verify`` over a million recordings
(``bench/indexlist.py`` prints them); the caller search needs the ``pg_trgm``
extension, which ships with PostgreSQL and which a database's owner may
create (it is a trusted extension).

``schema_version`` holds a row per migration (the version reached, and when). A fresh
database is created at :data:`SCHEMA_VERSION` at once; an older one is
brought up step by step by :data:`MIGRATIONS`. Either way it happens in one
transaction that first takes a transaction-level advisory lock
(:data:`MIGRATION_LOCK`), so of several processes migrating at once one does
the work and the others, once it commits, find the version already there.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import Connection

from linetap.firmware.errors import SyncError
from linetap.sync.central.indexschema import SCHEMA, SCHEMA_VERSION, TSVECTOR
from linetap.sync.central.searchschema import PG_SORT_INDEXES

logger = logging.getLogger(__name__)

# pg_advisory_xact_lock keys (bigint): one for migrations, one for write transactions (pgindex).
MIGRATION_LOCK = int.from_bytes(b"linetapM", "big")
VERSION_TABLE = ("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT PRIMARY KEY, "
                 "migrated_ms BIGINT NOT NULL)")

PG_INDEXES = (
    # `list --device` with or without a time range: one box's calls by start, no bitmap AND of two indexes
    # (a device's week: 0.1 ms instead of 1.4 ms at a million rows).
    "CREATE INDEX IF NOT EXISTS recordings_device_started ON recordings (device_id, started_ms NULLS FIRST, seq)",
    # `list --caller TEXT`: a substring of the number or name, lower-cased; trigram indexes turn a parallel
    # scan of every row (340 ms at a million) into a bitmap OR of two index scans (0.5 ms).
    "CREATE EXTENSION IF NOT EXISTS pg_trgm",
    "CREATE INDEX IF NOT EXISTS recordings_caller_number_trgm ON recordings USING gin "
    "(LOWER(caller_number) gin_trgm_ops)",
    "CREATE INDEX IF NOT EXISTS recordings_caller_name_trgm ON recordings USING gin "
    "(LOWER(caller_name) gin_trgm_ops)",
    # `search PHRASE`: full-text search of transcripts (SQLite: the FTS5 table of indexschema.SQLITE_ONLY).
    f"CREATE INDEX IF NOT EXISTS transcript_lines_fts ON transcript_lines USING gin ({TSVECTOR})",
    # The calls page's sort orders, on live recordings, NULLs placed as the page sorts them (searchschema).
    *PG_SORT_INDEXES,
)


def _translate(schema: str) -> list[str]:
    text = re.sub(r"\bBLOB\b", "BYTEA", schema)
    text = re.sub(r"\bINTEGER\b", "BIGINT", text)
    text = re.sub(r"\bTEXT\b", 'TEXT COLLATE "C"', text)
    return [s.strip() for s in text.split(";") if s.strip()]


STATEMENTS = _translate(SCHEMA)


def _migrate_3_to_4(db: Connection[Any]) -> None:
    """Staged parts hold their bytes in the index (``staged.data``): the shared staging of several hosts."""
    db.execute("ALTER TABLE staged ADD COLUMN IF NOT EXISTS data BYTEA")


def _migrate_4_to_5(db: Connection[Any]) -> None:
    """Waveform peaks (``peaks``) and the index on ``recordings.stored_ms``: created by create(), which
    upgrade() runs after any migration (indexschema's step of the same number)."""


def _tables_added(db: Connection[Any]) -> None:
    """A step whose tables are all new: upgrade() runs create() (IF NOT EXISTS) after the steps."""


def _migrate_9_to_10(db: Connection[Any]) -> None:
    """QA figures as numeric columns of ``recordings``, filled from the metrics of the recordings already
    stored; their indexes come with create() (indexschema's step of the same number; the caller search
    has its pg_trgm indexes already)."""
    from linetap.sync.central.figuresindex import COLUMNS, fill_figures
    from linetap.sync.central.pgindex import PgConnection

    for column in COLUMNS.values():
        db.execute(f"ALTER TABLE recordings ADD COLUMN IF NOT EXISTS {column} DOUBLE PRECISION")
    filled = fill_figures(PgConnection(db))
    logger.info("index figures filled recordings=%d", filled)


# version -> the step that brings a database of that version to the next one (PostgreSQL databases
# start at schema 3). A step for SQLite's next version needs its twin here.
MIGRATIONS: dict[int, Callable[[Connection[Any]], None]] = {
    3: _migrate_3_to_4,
    4: _migrate_4_to_5,
    5: _tables_added,  # quality assessment: qa_forms, evaluations, evaluation_events, comments
    6: _tables_added,  # speech analytics: analysis_jobs, transcript_lines (+ full-text index), adherence,
                       # analysis_events
    7: _tables_added,  # the console: users, sessions, failed logins, desk assignments, saved filters
    8: _tables_added,  # remote updates: fleet_groups, rollouts, rollout_targets, update_states
    9: _migrate_9_to_10,
    10: _tables_added,  # the calls search's sort indexes (searchschema.PG_SORT_INDEXES), made by create()
}


def create(db: Connection[Any]) -> None:
    """Every table and index (IF NOT EXISTS): a fresh database's schema, and tables added since."""
    for statement in (*STATEMENTS, *PG_INDEXES):
        db.execute(statement)


def current_version(db: Connection[Any]) -> int:
    """The database's schema version (0: none yet)."""
    if not db.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()[0]:
        return 0
    return int(db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0])


def upgrade(db: Connection[Any], where: str) -> int:
    """Create the schema, or migrate an older database to :data:`SCHEMA_VERSION`, in one transaction.

    ``db`` is a psycopg connection in autocommit mode whose rows index by
    position; ``where`` names the database in messages (a redacted URL).
    Returns the version now there.
    """
    db.execute("BEGIN")
    try:
        db.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        version = before = current_version(db)
        if version > SCHEMA_VERSION:
            raise SyncError(f"index {where} has schema version {version}, newer than this program's "
                            f"{SCHEMA_VERSION}; run the newer linetap-central on it")
        db.execute(VERSION_TABLE)
        if version == 0 and not db.execute("SELECT to_regclass('recordings') IS NOT NULL").fetchone()[0]:
            version = SCHEMA_VERSION  # fresh: today's schema at once
        while version < SCHEMA_VERSION:
            step = MIGRATIONS.get(version)
            if step is None:
                raise SyncError(f"index {where} has schema version {version} and this program has no "
                                "migration from it; restore a backup taken with its own version of linetap")
            step(db)
            version += 1
            logger.info("index migrated where=%s to_version=%d", where, version)
        if version != before:
            # A fresh schema, or tables and indexes added since (IF NOT EXISTS). Not at every open:
            # CREATE INDEX locks out writers for a moment even when the index is there.
            try:
                create(db)
            except psycopg.errors.InsufficientPrivilege as e:
                raise SyncError(f"index {where}: this role may not create the schema ({e}); run "
                                "`linetap-central migrate` as the database's owner, or have the owner run "
                                "CREATE EXTENSION pg_trgm in it first") from e
            db.execute("INSERT INTO schema_version (version, migrated_ms) VALUES (%s, %s)",
                       (version, round(time.time() * 1000)))
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return version
