"""The central index's SQLite schema and its migrations.

``PRAGMA user_version`` says which schema a file has; opening an older file
migrates it step by step in one write transaction (:data:`MIGRATIONS`), so
several processes opening it at once migrate it once. Every statement is plain
SQL that PostgreSQL runs too.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

from linetap.firmware.errors import SyncError
from linetap.sync.central.searchschema import CALLER_TRIGRAM, SQLITE_SORT_INDEXES

logger = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    device_id TEXT PRIMARY KEY,
    public_key TEXT NOT NULL,
    enrolled_ms BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS objects (
    device_id TEXT NOT NULL,
    recording_id TEXT NOT NULL,
    name TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size BIGINT NOT NULL,
    object_key TEXT NOT NULL,
    claimed_ms BIGINT NOT NULL,
    stored_ms BIGINT,
    vouched INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (device_id, recording_id, name)
);
CREATE INDEX IF NOT EXISTS objects_unvouched ON objects (device_id) WHERE vouched = 0;
CREATE TABLE IF NOT EXISTS staged (
    device_id TEXT NOT NULL,
    recording_id TEXT NOT NULL,
    name TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    part INTEGER NOT NULL,
    bytes BIGINT NOT NULL,
    staged_ms BIGINT NOT NULL,
    data BLOB,  -- the part's bytes when staged in the index (a shared store: sync/central/stagedparts.py)
    PRIMARY KEY (device_id, recording_id, name, sha256, part)
);
CREATE TABLE IF NOT EXISTS recordings (
    recording_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    started_ms BIGINT,
    ended_ms BIGINT,
    duration_ms BIGINT,
    flagged INTEGER NOT NULL,
    recorded INTEGER NOT NULL,
    discarded INTEGER NOT NULL,
    ended_by TEXT,
    consent TEXT,
    metrics TEXT,
    caller_number TEXT,
    caller_name TEXT,
    caller_withheld TEXT,
    manifest_sha256 TEXT NOT NULL,
    prev TEXT NOT NULL,
    segments INTEGER NOT NULL,
    bytes BIGINT NOT NULL,
    manifest_key TEXT NOT NULL,
    stored_ms BIGINT NOT NULL,
    hold INTEGER NOT NULL DEFAULT 0,
    hold_reason TEXT,
    erased_ms BIGINT,
    erase_reason TEXT,
    tombstone_key TEXT,
    qa_talk_ratio DOUBLE PRECISION,  -- QA figures from metrics, for the calls search (sync/central/figuresindex.py)
    qa_silence_share DOUBLE PRECISION,
    qa_overtalk_share DOUBLE PRECISION,
    qa_hold_s DOUBLE PRECISION,
    PRIMARY KEY (device_id, recording_id)
);
CREATE INDEX IF NOT EXISTS recordings_id ON recordings (recording_id);
CREATE INDEX IF NOT EXISTS recordings_device_seq ON recordings (device_id, seq);
CREATE INDEX IF NOT EXISTS recordings_started ON recordings (started_ms);
CREATE TABLE IF NOT EXISTS problems (
    device_id TEXT NOT NULL,
    recording_id TEXT,
    seq BIGINT,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL,
    found_ms BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS receipts (
    pos BIGINT PRIMARY KEY,
    device_id TEXT NOT NULL,
    recording_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    manifest_sha256 TEXT NOT NULL,
    stored_ms BIGINT NOT NULL,
    key_id TEXT NOT NULL,
    prev TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    data BLOB NOT NULL,
    UNIQUE (device_id, recording_id)
);
CREATE TABLE IF NOT EXISTS timestamps (
    pos BIGINT PRIMARY KEY,
    made_ms BIGINT NOT NULL,
    commitment BLOB NOT NULL,  -- the exact bytes stamped (sync/central/timestamps.py)
    digest_sha256 TEXT NOT NULL,
    tsa TEXT NOT NULL,  -- the URL asked
    token BLOB NOT NULL,  -- the TSA's whole DER TimeStampResp
    gen_time_ms BIGINT NOT NULL,
    tsa_cert BLOB NOT NULL  -- PEM: the TSA certificate the token was checked against when it came
);
CREATE TABLE IF NOT EXISTS access_log (
    pos BIGINT PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    device_id TEXT,
    recording_id TEXT,
    origin TEXT NOT NULL,
    detail TEXT,
    prev TEXT NOT NULL,
    sha256 TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS access_log_recording ON access_log (device_id, recording_id);
CREATE TABLE IF NOT EXISTS peaks (
    device_id TEXT NOT NULL,
    recording_id TEXT NOT NULL,
    made_ms BIGINT NOT NULL,
    data BLOB,  -- sync/central/peaks.py Peaks.to_bytes(), NULL when the audio did not decode
    problem TEXT,
    PRIMARY KEY (device_id, recording_id)
);
CREATE INDEX IF NOT EXISTS recordings_stored ON recordings (stored_ms);
CREATE TABLE IF NOT EXISTS fleet_devices (
    device_id TEXT PRIMARY KEY,
    boot BIGINT,
    session BIGINT,
    offline INTEGER,
    last_seen_ms BIGINT
);
CREATE TABLE IF NOT EXISTS fleet_latest (
    device_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    body TEXT NOT NULL,
    received_ms BIGINT NOT NULL,
    PRIMARY KEY (device_id, subject)
);
CREATE TABLE IF NOT EXISTS fleet_seq (
    device_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    last_seq BIGINT NOT NULL,
    PRIMARY KEY (device_id, kind)
);
CREATE TABLE IF NOT EXISTS qa_forms (
    form_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    title TEXT NOT NULL,
    source TEXT NOT NULL,  -- the form's TOML as added (sync/central/qa/forms.py)
    added_ms BIGINT NOT NULL,
    added_by TEXT NOT NULL,
    PRIMARY KEY (form_id, version)
);
CREATE TABLE IF NOT EXISTS evaluations (
    evaluation_id TEXT NOT NULL,
    version BIGINT NOT NULL,  -- 1, then one more per amendment (rows are never updated, but erasure clears the note)
    device_id TEXT NOT NULL,
    recording_id TEXT NOT NULL,
    form_id TEXT NOT NULL,
    form_version BIGINT NOT NULL,
    reviewer TEXT NOT NULL,
    agent TEXT,
    answers TEXT NOT NULL,  -- JSON: question id -> "yes", "no", "na" or a number
    score BIGINT,  -- hundredths of a percent, NULL when every question was not applicable
    raw_score BIGINT,
    critical_failed TEXT NOT NULL,  -- ids of critical questions answered no, comma-separated
    passed INTEGER NOT NULL,
    note TEXT,
    submitted_ms BIGINT NOT NULL,
    PRIMARY KEY (evaluation_id, version)
);
CREATE INDEX IF NOT EXISTS evaluations_recording ON evaluations (device_id, recording_id);
CREATE INDEX IF NOT EXISTS evaluations_agent ON evaluations (agent, submitted_ms);
CREATE TABLE IF NOT EXISTS evaluation_events (
    evaluation_id TEXT NOT NULL,
    pos BIGINT NOT NULL,
    action TEXT NOT NULL,
    state TEXT NOT NULL,  -- the state it led to (sync/central/qa/lifecycle.py)
    actor TEXT NOT NULL,
    note TEXT,
    at_ms BIGINT NOT NULL,
    PRIMARY KEY (evaluation_id, pos)
);
CREATE TABLE IF NOT EXISTS comments (
    comment_id TEXT PRIMARY KEY,
    device_id TEXT NOT NULL,
    recording_id TEXT NOT NULL,
    author TEXT NOT NULL,
    position_ms BIGINT NOT NULL,  -- where in the call's audio
    body TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS comments_recording ON comments (device_id, recording_id);
CREATE TABLE IF NOT EXISTS analysis_jobs (
    device_id TEXT NOT NULL,
    recording_id TEXT NOT NULL,
    state TEXT NOT NULL,  -- queued, running, done, failed, skipped (sync/central/analytics/tables.py)
    priority INTEGER NOT NULL,  -- 1: flagged on the box, analysed first
    stored_ms BIGINT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    owner TEXT,  -- the worker holding the lease
    lease_until_ms BIGINT,
    reason TEXT,  -- why it failed or was skipped
    engine TEXT,
    card_data INTEGER NOT NULL DEFAULT 0,
    updated_ms BIGINT NOT NULL,
    PRIMARY KEY (device_id, recording_id)
);
CREATE INDEX IF NOT EXISTS analysis_jobs_next ON analysis_jobs (state, priority, stored_ms);
CREATE TABLE IF NOT EXISTS transcript_lines (
    device_id TEXT NOT NULL,
    recording_id TEXT NOT NULL,
    channel TEXT NOT NULL,  -- near (agent) or far (caller)
    line INTEGER NOT NULL,
    start_ms BIGINT NOT NULL,  -- from the start of the call's audio
    end_ms BIGINT NOT NULL,
    text TEXT NOT NULL,  -- redacted: spoken card data is never stored
    words TEXT NOT NULL,  -- JSON [[start_ms, end_ms, probability percent, word], ...]
    PRIMARY KEY (device_id, recording_id, channel, line)
);
CREATE TABLE IF NOT EXISTS adherence (
    device_id TEXT NOT NULL,
    recording_id TEXT NOT NULL,
    script TEXT NOT NULL,
    item TEXT NOT NULL,
    kind TEXT NOT NULL,  -- required or forbidden
    passed INTEGER NOT NULL,
    score INTEGER NOT NULL,  -- best fuzzy match, percent
    at_ms BIGINT,
    heard TEXT,
    PRIMARY KEY (device_id, recording_id, script, item)
);
CREATE TABLE IF NOT EXISTS analysis_events (
    device_id TEXT NOT NULL,
    recording_id TEXT NOT NULL,
    kind TEXT NOT NULL,  -- spoken-card-data
    channel TEXT NOT NULL,
    start_ms BIGINT NOT NULL,
    end_ms BIGINT NOT NULL,
    detail TEXT NOT NULL,  -- card-number or security-code (never the digits)
    found_ms BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS analysis_events_recording ON analysis_events (device_id, recording_id);
CREATE TABLE IF NOT EXISTS console_users (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    team TEXT,
    password_hash TEXT NOT NULL,  -- argon2id (sync/central/web/passwords.py)
    disabled INTEGER NOT NULL DEFAULT 0,
    audio_granted INTEGER NOT NULL DEFAULT 0,  -- an auditor may hear audio
    created_ms BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS console_sessions (
    id_sha256 TEXT PRIMARY KEY,  -- the hash of the cookie's id, never the id itself
    name TEXT NOT NULL,
    csrf TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    seen_ms BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS console_sessions_name ON console_sessions (name);
CREATE TABLE IF NOT EXISTS console_failures (
    kind TEXT NOT NULL,  -- user or address
    who TEXT NOT NULL,
    at_ms BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS console_failures_who ON console_failures (kind, who, at_ms);
CREATE TABLE IF NOT EXISTS desk_assignments (
    device_id TEXT NOT NULL,
    agent TEXT NOT NULL,
    from_ms BIGINT NOT NULL,  -- until the device's next assignment
    PRIMARY KEY (device_id, from_ms)
);
CREATE INDEX IF NOT EXISTS desk_assignments_agent ON desk_assignments (agent);
CREATE TABLE IF NOT EXISTS saved_filters (
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    query TEXT NOT NULL,
    PRIMARY KEY (owner, name)
);
CREATE TABLE IF NOT EXISTS fleet_groups (
    name TEXT NOT NULL,
    device_id TEXT NOT NULL,
    added_ms BIGINT NOT NULL,
    PRIMARY KEY (name, device_id)
);
CREATE TABLE IF NOT EXISTS rollouts (
    rollout_id TEXT PRIMARY KEY,
    version TEXT NOT NULL,
    release_id TEXT NOT NULL,
    halt_permille INTEGER NOT NULL,  -- halts itself when more than this share (per mille) rolled back or failed
    allow_downgrade INTEGER NOT NULL,
    state TEXT NOT NULL,  -- active, halted or done (sync/central/rollout.py)
    created_ms BIGINT NOT NULL,
    ended_ms BIGINT,
    reason TEXT  -- why it halted
);
CREATE TABLE IF NOT EXISTS rollout_targets (
    rollout_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    seq BIGINT NOT NULL,  -- the offer envelope's sequence number
    state TEXT,  -- the box's last update/state naming this rollout
    have BIGINT,
    total BIGINT,
    outcome TEXT,
    code TEXT,
    reason TEXT,
    at_ms BIGINT,
    withdrawn_ms BIGINT,  -- its offer was withdrawn (a halted rollout)
    PRIMARY KEY (rollout_id, device_id)
);
CREATE TABLE IF NOT EXISTS update_states (
    device_id TEXT PRIMARY KEY,  -- each box's newest update/state (sync/updatewire.py)
    state TEXT NOT NULL,
    current_version TEXT NOT NULL,
    version TEXT,
    release_id TEXT,
    rollout_id TEXT,
    have BIGINT NOT NULL,
    total BIGINT NOT NULL,
    outcome TEXT,
    code TEXT,
    reason TEXT,
    at_ms BIGINT NOT NULL,
    received_ms BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS recordings_qa_talk_ratio ON recordings (qa_talk_ratio);
CREATE INDEX IF NOT EXISTS recordings_qa_silence_share ON recordings (qa_silence_share);
CREATE INDEX IF NOT EXISTS recordings_qa_overtalk_share ON recordings (qa_overtalk_share);
CREATE INDEX IF NOT EXISTS recordings_qa_hold_s ON recordings (qa_hold_s);
"""

# Engine-specific full-text search over transcript_lines: FTS5 here, a GIN index in pgschema.PG_INDEXES.
# The calls search's trigram table and sort indexes: searchschema.py (both engines').
SQLITE_ONLY = (
    "CREATE VIRTUAL TABLE IF NOT EXISTS transcript_fts USING fts5(text, device_id UNINDEXED, "
    "recording_id UNINDEXED, channel UNINDEXED, line UNINDEXED, tokenize = 'porter unicode61')",
    *CALLER_TRIGRAM, *SQLITE_SORT_INDEXES,
)

# PostgreSQL's searched expression (pgschema's GIN index; analytics/tables.py's queries match it).
TSVECTOR = "to_tsvector('english', text)"

SCHEMA_VERSION = 11


def _migrate_0_to_1(db: sqlite3.Connection) -> None:
    """Recordings keyed by (device, recording) instead of recording id alone; vouched objects."""
    old = [r["name"] for r in db.execute("PRAGMA table_info(recordings)")]
    db.execute("ALTER TABLE recordings RENAME TO recordings_v0")
    db.execute("DROP INDEX IF EXISTS recordings_device_seq")
    db.execute("DROP INDEX IF EXISTS recordings_started")
    if "vouched" not in [r["name"] for r in db.execute("PRAGMA table_info(objects)")]:
        db.execute("ALTER TABLE objects ADD COLUMN vouched INTEGER NOT NULL DEFAULT 0")
    create(db)
    new = [r["name"] for r in db.execute("PRAGMA table_info(recordings)")]
    columns = ", ".join(c for c in old if c in new)
    db.execute(f"INSERT INTO recordings ({columns}) SELECT {columns} FROM recordings_v0")
    db.execute("DROP TABLE recordings_v0")
    db.execute("UPDATE objects SET vouched = 1 WHERE EXISTS (SELECT 1 FROM recordings r WHERE "
               "r.device_id = objects.device_id AND r.recording_id = objects.recording_id)")


def _migrate_1_to_2(db: sqlite3.Connection) -> None:
    """The receipt log (``receipts``), empty: recordings stored before it have no receipt, and ``verify``
    says so; a box sending such a manifest again gets one signed then."""
    statement = SCHEMA[SCHEMA.index("CREATE TABLE IF NOT EXISTS receipts"):]
    db.execute(statement[:statement.index(";")])


def _migrate_2_to_3(db: sqlite3.Connection) -> None:
    """Trusted timestamps over the chain heads (``timestamps``) and the access log (``access_log``), both
    empty: they start when the program that writes them first runs."""
    # Their CREATE statements run in create(), which upgrade() calls after every migration.


def _migrate_3_to_4(db: sqlite3.Connection) -> None:
    """Staged parts may hold their bytes in the index (``staged.data``, NULL for file-staged parts)."""
    if "data" not in [r["name"] for r in db.execute("PRAGMA table_info(staged)")]:
        db.execute("ALTER TABLE staged ADD COLUMN data BLOB")


def _migrate_4_to_5(db: sqlite3.Connection) -> None:
    """Waveform peaks (``peaks``), empty: ``serve``'s peaks step fills it for every recording stored, old
    ones included; the index on ``recordings.stored_ms`` lets it find new ones without a scan."""
    # Their CREATE statements run in create(), which upgrade() calls after every migration.


def _migrate_5_to_6(db: sqlite3.Connection) -> None:
    """Quality assessment: forms, evaluations with their versions and life, comments (``qa_forms``,
    ``evaluations``, ``evaluation_events``, ``comments``), all empty."""
    # Their CREATE statements run in create(), which upgrade() calls after every migration.


def _migrate_6_to_7(db: sqlite3.Connection) -> None:
    """Speech analytics (``analysis_jobs``, ``transcript_lines`` with ``transcript_fts``, ``adherence``,
    ``analysis_events``), all empty: ``linetap-central analyze`` queues every stored call when it first runs."""
    # Their CREATE statements run in create(), which upgrade() calls after every migration.


def _migrate_7_to_8(db: sqlite3.Connection) -> None:
    """The console's users, sessions, failed logins, desk assignments and saved filters, all empty."""
    # Their CREATE statements run in create(), which upgrade() calls after every migration.


def _migrate_8_to_9(db: sqlite3.Connection) -> None:
    """Remote updates: fleet groups, rollouts with their targets, each box's update state, all empty."""
    # Their CREATE statements run in create(), which upgrade() calls after every migration.


def _migrate_9_to_10(db: sqlite3.Connection) -> None:
    """QA figures as numeric columns of ``recordings`` (``qa_talk_ratio`` ...), filled from the metrics of
    the recordings already stored, and the caller search's trigram index (``caller_fts``), from their callers."""
    from linetap.sync.central.figuresindex import COLUMNS, fill_figures

    have = {r["name"] for r in db.execute("PRAGMA table_info(recordings)")}
    for column in COLUMNS.values():
        if column not in have:
            db.execute(f"ALTER TABLE recordings ADD COLUMN {column} DOUBLE PRECISION")
    create(db)
    filled = fill_figures(db)
    db.execute("INSERT OR IGNORE INTO caller_keys (device_id, recording_id) SELECT device_id, recording_id "
               "FROM recordings WHERE caller_number IS NOT NULL OR caller_name IS NOT NULL")
    db.execute("INSERT INTO caller_fts (rowid, caller_number, caller_name) SELECT k.id, r.caller_number, "
               "r.caller_name FROM caller_keys k JOIN recordings r ON r.device_id = k.device_id AND "
               "r.recording_id = k.recording_id WHERE k.id NOT IN (SELECT rowid FROM caller_fts)")
    logger.info("index figures filled recordings=%d", filled)


def _migrate_10_to_11(db: sqlite3.Connection) -> None:
    """The calls search's sort indexes on live recordings (``searchschema.SQLITE_SORT_INDEXES``)."""
    # Their CREATE statements run in create(), which upgrade() calls after every migration.


# user_version -> the step that brings a file of that version to the next one.
MIGRATIONS = {0: _migrate_0_to_1, 1: _migrate_1_to_2, 2: _migrate_2_to_3, 3: _migrate_3_to_4,
              4: _migrate_4_to_5, 5: _migrate_5_to_6, 6: _migrate_6_to_7,
              7: _migrate_7_to_8, 8: _migrate_8_to_9, 9: _migrate_9_to_10,
              10: _migrate_10_to_11}


def create(db: sqlite3.Connection) -> None:
    # Statement by statement: executescript() would commit the caller's transaction.
    for statement in SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)
    for statement in SQLITE_ONLY:
        db.execute(statement)


def upgrade(db: sqlite3.Connection, path: Path) -> None:
    """Create the schema, or migrate an older file to :data:`SCHEMA_VERSION`, in one transaction."""
    db.execute("BEGIN IMMEDIATE")  # one process migrates; the others then see the new version
    try:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise SyncError(f"index {path} has schema version {version}, newer than this "
                            f"program's {SCHEMA_VERSION}; run the newer linetap-central on it")
        fresh = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'recordings'"
                           ).fetchone() is None
        if fresh:
            create(db)
        else:
            while version < SCHEMA_VERSION:
                logger.info("index migrated path=%s from_version=%d", path, version)
                MIGRATIONS[version](db)
                version += 1
            create(db)  # tables added since (IF NOT EXISTS)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
