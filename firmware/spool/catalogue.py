"""The spool's SQLite catalogue: schema, connection, and what a row must hold to be trusted.

The catalogue is WAL with ``synchronous=FULL``: a committed segment row
survives a power cut. It is an index of what the files hold, never the only
copy: recovery rebuilds it from ``open.json`` and ``manifest.json`` when it
is lost or damaged, and every value read back is checked before it is used
(:func:`row_problem`), since the card may have been damaged or tampered with.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from linetap.firmware import untrusted
from linetap.firmware.spool.layout import (
    MANIFEST_MAX_BYTES,
    MAX_SEGMENT_INDEX,
    OPEN_MAX_BYTES,
    SEGMENT_MAX_BYTES,
    is_recording_id,
)

STATES = ("recording", "closed", "synced", "purged", "quarantined")
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
SQLITE_HEADER = b"SQLite format 3\x00"

SCHEMA = """
CREATE TABLE IF NOT EXISTS recordings (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL UNIQUE,
    state TEXT NOT NULL,
    started_wall_ms INTEGER, started_mono_ms INTEGER,
    ended_wall_ms INTEGER, ended_mono_ms INTEGER,
    clock_synced INTEGER NOT NULL DEFAULT 0,
    boot_id TEXT,
    segments INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0,
    flagged INTEGER NOT NULL DEFAULT 0,
    recorded INTEGER NOT NULL DEFAULT 0,
    discarded INTEGER NOT NULL DEFAULT 0,
    ended_by TEXT,
    consent TEXT NOT NULL DEFAULT '[]',
    opening TEXT,
    manifest_sha256 TEXT,
    synced_wall_ms INTEGER,
    note TEXT,
    receipt_stored_ms INTEGER
);
CREATE TABLE IF NOT EXISTS segments (
    recording_id TEXT NOT NULL REFERENCES recordings(id),
    idx INTEGER NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    synced INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (recording_id, idx)
);
"""

COLUMNS = {
    "recordings": ("id", "seq", "state", "started_wall_ms", "started_mono_ms", "ended_wall_ms",
                   "ended_mono_ms", "clock_synced", "boot_id", "segments", "bytes", "flagged", "recorded",
                   "discarded", "ended_by", "consent", "opening", "manifest_sha256", "synced_wall_ms", "note"),
    "segments": ("recording_id", "idx", "size", "sha256", "synced"),
}
# Columns added after the first catalogues were written: a catalogue without one gets it at open
# (ALTER TABLE ... ADD COLUMN, NULL in old rows), so a box keeps its catalogue across the upgrade.
ADDED_COLUMNS = {
    "recordings": (("receipt_stored_ms", "INTEGER"),),  # when the store's receipt was kept (receipt.json)
}

def migrate(db: sqlite3.Connection) -> list[str]:
    """Add the :data:`ADDED_COLUMNS` an older catalogue lacks; returns what was added."""
    added = []
    for table, columns in ADDED_COLUMNS.items():
        have = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
        for name, kind in columns:
            if have and name not in have:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
                added.append(f"{table}.{name}")
    return added


def recording_values(row: Mapping[str, Any] | sqlite3.Row) -> dict[str, Any]:
    """A ``recordings`` row's values by column: the first columns, and the added ones it has."""
    names = COLUMNS["recordings"] + tuple(n for n, _ in ADDED_COLUMNS["recordings"] if n in row.keys())
    return {key: row[key] for key in names}


def schema_problem(db: sqlite3.Connection, *, tables_required: bool) -> str | None:
    """What the catalogue's tables lack, or None. A missing table is made by ``SCHEMA`` at start."""
    for table, wanted in COLUMNS.items():
        have = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
        if not have and tables_required:
            return f"it has no {table} table"
        if have and (missing := [c for c in wanted if c not in have]):
            return f"its {table} table lacks the columns {', '.join(missing)}"
    return None


def shown(value: Any) -> str:
    if isinstance(value, bytes):
        return f"a blob of {len(value)} bytes"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def int_problem(key: str, value: Any, lo: int, hi: int, *, null: bool = False) -> str | None:
    if value is None and null:
        return None
    if type(value) is not int or not lo <= value <= hi:
        return f"{key} = {shown(value)} is not a whole number from {lo} to {hi}"
    return None


def opening_problem(opening: Any) -> str | None:
    """Why a parsed ``open.json`` (or the row's copy) cannot open a recording, or None."""
    if not isinstance(opening, dict):
        return "it is not a JSON object"
    started = opening.get("started")
    if not isinstance(started, dict):
        return "it has no 'started' object"
    for key in ("wall_ms", "mono_ms"):
        if (p := int_problem(f"started.{key}", started.get(key), untrusted.MIN_SAFE_INT,
                             untrusted.MAX_SAFE_INT, null=True)) is not None:
            return p
    if not isinstance(started.get("clock_synced"), bool):
        return "started.clock_synced is not true or false"
    if not isinstance(opening.get("device_id"), str) or not isinstance(opening.get("codec"), dict):
        return "it lacks device_id or codec"
    return None


def row_problem(row: Mapping[str, Any]) -> str | None:
    """Why a ``recordings`` row cannot be trusted (wrong type, out of range, unknown state), or None."""
    rid = row["id"]
    if not is_recording_id(rid):
        return f"id = {shown(rid)} is not a recording id"
    checks = [int_problem("seq", row["seq"], 1, untrusted.MAX_SAFE_INT)]
    checks += [int_problem(k, row[k], 0, untrusted.MAX_SAFE_INT) for k in ("segments", "bytes")]
    checks += [int_problem(k, row[k], 0, 1) for k in ("clock_synced", "flagged", "recorded", "discarded")]
    checks += [int_problem(k, row[k], untrusted.MIN_SAFE_INT, untrusted.MAX_SAFE_INT, null=True)
               for k in ("started_wall_ms", "started_mono_ms", "ended_wall_ms", "ended_mono_ms",
                         "synced_wall_ms")]
    if "receipt_stored_ms" in row.keys():  # an older catalogue read as it is (spool list) lacks it
        checks.append(int_problem("receipt_stored_ms", row["receipt_stored_ms"], 0, untrusted.MAX_SAFE_INT,
                                  null=True))
    if (problem := next((c for c in checks if c is not None), None)) is not None:
        return problem
    if row["state"] not in STATES:
        return f"state = {shown(row['state'])} is not one of {', '.join(STATES)}"
    for key in ("boot_id", "ended_by", "note"):
        if row[key] is not None and not isinstance(row[key], str):
            return f"{key} = {shown(row[key])} is not text"
    digest = row["manifest_sha256"]
    if digest is not None and not (isinstance(digest, str) and SHA256_HEX.fullmatch(digest)):
        return f"manifest_sha256 = {shown(digest)} is not a SHA-256 in hex"
    try:
        consent = untrusted.loads(row["consent"] if isinstance(row["consent"], str) else b"\xff",
                                  what="consent", max_bytes=MANIFEST_MAX_BYTES)
    except untrusted.Untrusted:
        return f"consent = {shown(row['consent'])} is not a JSON list of events"
    if not isinstance(consent, list) or not all(isinstance(e, dict) for e in consent):
        return f"consent = {shown(row['consent'])} is not a JSON list of events"
    if row["state"] == "recording":
        try:
            opening = untrusted.loads(row["opening"] if isinstance(row["opening"], str) else b"\xff",
                                      what="opening", max_bytes=OPEN_MAX_BYTES)
        except untrusted.Untrusted:
            opening = None
        if (problem := opening_problem(opening)) is not None:
            return f"opening = {shown(row['opening'])} cannot open the recording: {problem}"
    return None


def segment_row_problem(row: Mapping[str, Any]) -> str | None:
    if not isinstance(row["recording_id"], str):
        return f"recording_id = {shown(row['recording_id'])} is not text"
    checks = [int_problem("idx", row["idx"], 0, MAX_SEGMENT_INDEX),
              int_problem("size", row["size"], 0, SEGMENT_MAX_BYTES),
              int_problem("synced", row["synced"], 0, 1)]
    if (problem := next((c for c in checks if c is not None), None)) is not None:
        return problem
    if not isinstance(row["sha256"], str) or not SHA256_HEX.fullmatch(row["sha256"]):
        return f"sha256 = {shown(row['sha256'])} is not a SHA-256 in hex"
    return None


def connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA journal_mode=WAL")
    # FULL: a committed segment row survives a power cut (NORMAL could roll it back).
    db.execute("PRAGMA synchronous=FULL")
    return db



def open_catalogue(path: Path, on_damage: Callable[[str], None]) -> sqlite3.Connection:
    """The catalogue at ``path``, checked; a damaged one is handed to ``on_damage`` and made anew.

    ``on_damage(why)`` must move the catalogue's files out of the way (recovery
    quarantines them); the new, empty catalogue is then filled from the
    recordings on disk.
    """
    db: sqlite3.Connection | None = None
    try:
        if path.exists() and not path.is_file():
            raise sqlite3.DatabaseError("it is not a file")
        db = connect(path)
        check = db.execute("PRAGMA integrity_check").fetchone()[0]
        if check != "ok":
            raise sqlite3.DatabaseError(f"integrity_check: {check}")
        if (problem := schema_problem(db, tables_required=False)) is not None:
            raise sqlite3.DatabaseError(f"not a linetap catalogue: {problem}")
        migrate(db)
        db.executescript(SCHEMA)
        return db
    except sqlite3.DatabaseError as e:
        if db is not None:
            db.close()
        on_damage(str(e))
    db = connect(path)
    db.executescript(SCHEMA)
    return db


def row_dict(row: Mapping[str, Any] | sqlite3.Row) -> dict[str, Any]:
    out = {k: row[k] for k in row.keys() if k != "opening"}
    out.setdefault("receipt_stored_ms", None)
    out["consent"] = untrusted.loads(row["consent"], what="catalogue consent column",
                                     max_bytes=MANIFEST_MAX_BYTES) if row["consent"] else []
    for flag in ("clock_synced", "flagged", "recorded", "discarded"):
        out[flag] = bool(out[flag])
    return out
