"""The index's tables of remote updates: groups, rollouts and their targets, each box's update state.

Part of :class:`~linetap.sync.central.index.IndexTables`, so SQLite and
PostgreSQL run the same statements (schema in
:mod:`~linetap.sync.central.indexschema`):

- ``fleet_groups``: named groups of boxes (``fleet group add``);
- ``rollouts``: one row per ``fleet update push`` (version, release id,
  halt share in per mille, active/halted/done);
- ``rollout_targets``: the boxes a rollout offered its release to, with the
  offer's sequence number and the last state and outcome each box reported
  for that rollout (so a later rollout does not hide how this one went);
- ``update_states``: each box's newest ``update/state``, whichever rollout
  it names (``fleet list``/``show``). Newest by the box's ``at_ms``; the
  same retained message delivered again changes nothing.

The fleet tracker writes states (:meth:`RolloutTables.record_update_states`);
the operator's tools write groups, rollouts and withdrawals.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from linetap.sync.updatewire import OUTCOMES, UpdateState

ROLLOUT_COLUMNS = ("rollout_id", "version", "release_id", "halt_permille", "allow_downgrade", "state",
                   "created_ms")
FAILED_OUTCOMES = ("rolled-back", "failed")


class RolloutTables:
    """Remote updates' statements, on the index's one connection (``_sql``)."""

    def _sql(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError

    # -- groups --

    def add_to_group(self, name: str, devices: Iterable[str], now_ms: int) -> None:
        with self._sql() as db:
            for device_id in devices:
                db.execute("INSERT INTO fleet_groups (name, device_id, added_ms) VALUES (?, ?, ?) "
                           "ON CONFLICT DO NOTHING", (name, device_id, now_ms))

    def remove_from_group(self, name: str, devices: Iterable[str]) -> None:
        with self._sql() as db:
            for device_id in devices:
                db.execute("DELETE FROM fleet_groups WHERE name = ? AND device_id = ?", (name, device_id))

    def groups(self) -> dict[str, list[str]]:
        """Group name → its devices, both sorted."""
        out: dict[str, list[str]] = {}
        with self._sql() as db:
            for r in db.execute("SELECT name, device_id FROM fleet_groups ORDER BY name, device_id"):
                out.setdefault(r["name"], []).append(r["device_id"])
        return out

    # -- rollouts --

    def add_rollout(self, row: Mapping[str, Any], seqs: Mapping[str, int]) -> set[str]:
        """A new rollout and its targets (device → the offer's seq), in one transaction.

        The new offer replaces a target's offer of an active rollout it has no outcome of yet: that
        rollout counts it withdrawn. Returns the rollouts so touched.
        """
        touched: set[str] = set()
        with self._sql() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                for device_id in seqs:
                    replaced = [r["rollout_id"] for r in db.execute(
                        "SELECT t.rollout_id FROM rollout_targets t JOIN rollouts r ON r.rollout_id = t.rollout_id "
                        "WHERE t.device_id = ? AND t.outcome IS NULL AND t.withdrawn_ms IS NULL "
                        "AND r.state = 'active'", (device_id,))]
                    for rollout_id in replaced:
                        db.execute("UPDATE rollout_targets SET withdrawn_ms = ? WHERE rollout_id = ? AND "
                                   "device_id = ?", (row["created_ms"], rollout_id, device_id))
                    touched.update(replaced)
                db.execute(f"INSERT INTO rollouts ({', '.join(ROLLOUT_COLUMNS)}) VALUES "
                           f"({', '.join('?' for _ in ROLLOUT_COLUMNS)})",
                           [int(row[c]) if c == "allow_downgrade" else row[c] for c in ROLLOUT_COLUMNS])
                for device_id, seq in seqs.items():
                    db.execute("INSERT INTO rollout_targets (rollout_id, device_id, seq) VALUES (?, ?, ?)",
                               (row["rollout_id"], device_id, seq))
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        return touched

    def rollout(self, rollout_id: str) -> dict[str, Any] | None:
        with self._sql() as db:
            row = db.execute("SELECT * FROM rollouts WHERE rollout_id = ?", (rollout_id,)).fetchone()
        return None if row is None else dict(row)

    def rollouts(self) -> list[dict[str, Any]]:
        with self._sql() as db:
            return [dict(r) for r in db.execute("SELECT * FROM rollouts ORDER BY created_ms, rollout_id")]

    def rollout_targets(self, rollout_id: str) -> list[dict[str, Any]]:
        with self._sql() as db:
            return [dict(r) for r in db.execute("SELECT * FROM rollout_targets WHERE rollout_id = ? "
                                                "ORDER BY device_id", (rollout_id,))]

    def end_rollout(self, rollout_id: str, state: str, now_ms: int, reason: str | None = None) -> bool:
        """Move an active rollout to ``state`` (halted, done); False when it was not active."""
        with self._sql() as db:
            cursor = db.execute("UPDATE rollouts SET state = ?, ended_ms = ?, reason = ? WHERE rollout_id = ? "
                                "AND state = 'active'", (state, now_ms, reason, rollout_id))
        return cursor.rowcount == 1

    def mark_withdrawn(self, rollout_id: str, devices: Sequence[str], now_ms: int) -> None:
        with self._sql() as db:
            for device_id in devices:
                db.execute("UPDATE rollout_targets SET withdrawn_ms = ? WHERE rollout_id = ? AND device_id = ? "
                           "AND withdrawn_ms IS NULL", (now_ms, rollout_id, device_id))

    # -- what boxes report --

    def record_update_states(self, states: Sequence[tuple[str, UpdateState]], received_ms: int) -> set[str]:
        """Keep each box's newest state, and each rollout's view of its targets, in one transaction.

        Returns the rollouts for which an outcome was recorded (to be judged for halting).
        """
        judged: set[str] = set()
        with self._sql() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                for device_id, s in states:
                    db.execute(
                        "INSERT INTO update_states (device_id, state, current_version, version, release_id, "
                        "rollout_id, have, total, outcome, code, reason, at_ms, received_ms) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (device_id) DO UPDATE SET "
                        "state = excluded.state, current_version = excluded.current_version, "
                        "version = excluded.version, release_id = excluded.release_id, "
                        "rollout_id = excluded.rollout_id, have = excluded.have, total = excluded.total, "
                        "outcome = excluded.outcome, code = excluded.code, reason = excluded.reason, "
                        "at_ms = excluded.at_ms, received_ms = excluded.received_ms "
                        "WHERE update_states.at_ms <= excluded.at_ms",
                        (device_id, s.state, s.current, s.version, s.release, s.rollout, s.have, s.total,
                         s.outcome, s.code, s.reason, s.at_ms, received_ms))
                    if s.rollout is None:
                        continue
                    # An outcome counts for the rollout only in the state that ends an attempt: a state
                    # payload also carries the last outcome of an earlier attempt.
                    ended = s.state in OUTCOMES
                    ending = ", outcome = ?, code = ?, reason = ?" if ended else ""
                    cursor = db.execute(
                        f"UPDATE rollout_targets SET state = ?, have = ?, total = ?, at_ms = ?{ending} "
                        "WHERE rollout_id = ? AND device_id = ? AND (at_ms IS NULL OR at_ms <= ?)",
                        (s.state, s.have, s.total, s.at_ms, *((s.outcome or s.state, s.code, s.reason)
                                                               if ended else ()), s.rollout, device_id, s.at_ms))
                    if cursor.rowcount == 1 and ended:
                        judged.add(s.rollout)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        return judged

    def update_states(self) -> dict[str, dict[str, Any]]:
        """Device → its newest update state row."""
        with self._sql() as db:
            return {r["device_id"]: dict(r) for r in db.execute("SELECT * FROM update_states")}
