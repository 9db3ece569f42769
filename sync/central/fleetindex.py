"""The index's fleet tables: what the fleet tracker keeps of each box.

Kept by :class:`linetap.sync.central.tracker.FleetTracker`: ``fleet_devices``
holds each box's newest status order (boot, session, offline) and when it was
last seen, ``fleet_latest`` the newest message of each subject (status, birth,
telemetry, config/reported, alarm/<name>), and ``fleet_seq`` the last config
version and command seq the centre used per box. :class:`FleetTables` is part
of :class:`~linetap.sync.central.index.SqliteIndex`.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FleetUpdate:
    """The newest message of one subject from one box, for :meth:`SqliteIndex.record_fleet`."""

    device_id: str
    subject: str  # status, birth, telemetry, config/reported, alarm/<name>
    body: str  # JSON text
    received_ms: int
    seen_ms: int | None  # when the box was last alive by this message; None when unknown
    order: tuple[int, int, int] | None = None  # a status's (boot, session, 1 if offline else 0)


class FleetTables:
    """The fleet's statements, on the index's one connection (``_sql``)."""

    def _sql(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError

    def record_fleet(self, updates: Sequence[FleetUpdate]) -> list[bool]:
        """Store ``updates`` in one transaction; per update, False for a status older than one kept.

        A status is kept when its order is not below the newest kept for the
        device (offline after online at the same pair: the Will ends that session).
        """
        kept = []
        with self._sql() as db:
            db.execute("BEGIN IMMEDIATE")  # SQLite's write lock up front; PostgreSQL: BEGIN
            try:
                for update in updates:
                    db.execute("INSERT INTO fleet_devices (device_id) VALUES (?) ON CONFLICT DO NOTHING",
                               (update.device_id,))
                    if update.order is not None:
                        boot, session, offline = update.order
                        cursor = db.execute(
                            "UPDATE fleet_devices SET boot = ?, session = ?, offline = ? WHERE device_id = ? "
                            "AND (boot IS NULL OR boot < ? OR (boot = ? AND (session < ? OR "
                            "(session = ? AND offline <= ?))))",
                            (boot, session, offline, update.device_id, boot, boot, session, session, offline))
                        if cursor.rowcount != 1:
                            kept.append(False)
                            continue
                    kept.append(True)
                    db.execute("INSERT INTO fleet_latest (device_id, subject, body, received_ms) VALUES (?, ?, ?, ?) "
                               "ON CONFLICT (device_id, subject) DO UPDATE SET body = excluded.body, "
                               "received_ms = excluded.received_ms",
                               (update.device_id, update.subject, update.body, update.received_ms))
                    if update.seen_ms is not None:
                        db.execute("UPDATE fleet_devices SET last_seen_ms = ? WHERE device_id = ? AND "
                                   "(last_seen_ms IS NULL OR last_seen_ms < ?)",
                                   (update.seen_ms, update.device_id, update.seen_ms))
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        return kept

    def fleet_devices(self) -> list[dict[str, Any]]:
        """Every box the fleet tables or the enrolment know, by device id.

        Each: ``device_id``, ``enrolled``, ``boot``, ``session``,
        ``last_seen_ms``, and ``subjects``: subject → ``{"body", "received_ms"}``.
        """
        with self._sql() as db:
            rows = {r["device_id"]: dict(r) | {"enrolled": False, "subjects": {}}
                    for r in db.execute("SELECT device_id, boot, session, last_seen_ms FROM fleet_devices")}
            for r in db.execute("SELECT device_id FROM devices"):
                rows.setdefault(r["device_id"], {"device_id": r["device_id"], "boot": None, "session": None,
                                                 "last_seen_ms": None, "subjects": {}})["enrolled"] = True
            for r in db.execute("SELECT device_id, subject, body, received_ms FROM fleet_latest"):
                rows[r["device_id"]]["subjects"][r["subject"]] = {"body": json.loads(r["body"]),
                                                                  "received_ms": r["received_ms"]}
        return [rows[name] for name in sorted(rows)]

    def fleet_device(self, device_id: str) -> dict[str, Any] | None:
        """One box as in :meth:`fleet_devices`, or None when neither tracked nor enrolled."""
        with self._sql() as db:
            row = db.execute("SELECT device_id, boot, session, last_seen_ms FROM fleet_devices WHERE device_id = ?",
                             (device_id,)).fetchone()
            enrolled = db.execute("SELECT 1 FROM devices WHERE device_id = ?", (device_id,)).fetchone() is not None
            latest = db.execute("SELECT subject, body, received_ms FROM fleet_latest WHERE device_id = ?",
                                (device_id,)).fetchall()
        if row is None and not enrolled:
            return None
        out = dict(row) if row is not None else {"device_id": device_id, "boot": None, "session": None,
                                                 "last_seen_ms": None}
        out["enrolled"] = enrolled
        out["subjects"] = {r["subject"]: {"body": json.loads(r["body"]), "received_ms": r["received_ms"]}
                           for r in latest}
        return out

    def next_fleet_seq(self, device_id: str, kind: str, *, at_least: int = 1) -> int:
        """Take the next ``kind`` ("config", "cmd") sequence number for a box: above every one taken
        before, and at least ``at_least``."""
        with self._sql() as db:
            row = db.execute(
                "INSERT INTO fleet_seq (device_id, kind, last_seq) VALUES (?, ?, ?) "
                "ON CONFLICT (device_id, kind) DO UPDATE SET last_seq = CASE "
                "WHEN fleet_seq.last_seq + 1 > excluded.last_seq THEN fleet_seq.last_seq + 1 "
                "ELSE excluded.last_seq END RETURNING last_seq",
                (device_id, kind, max(1, at_least))).fetchone()
        return int(row["last_seq"])
