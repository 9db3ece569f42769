"""Retention: what the spool deletes, when, and the spool-full fault it keeps.

Deleting a recording deletes ciphertext only: without the central key it is
noise, so flash wear-levelling leaving old blocks behind reveals nothing, and
deletion is secure erasure here. On a box that holds the store's public key
(``keys init --store-key``), a synced recording may go only once it holds
the central store's receipt (``receipt.json``, checked before it was kept;
:meth:`~linetap.firmware.spool.Spool.keep_receipt`): the ack alone is no
proof the centre has it. Synced recordings without one are kept (counted in
:meth:`~linetap.firmware.spool.Spool.status` as ``synced_without_receipt``)
and are deleted only as unsynced ones are, by ``overwrite-oldest`` (before
any unsynced one). A box without a store key cannot check a receipt at all;
it keeps the rule it had before receipts (the ``stored`` ack, which only the
centre's broker role may publish, is enough), so a fleet upgraded before its
boxes get the key keeps recording instead of filling up; the service and
``linetap doctor`` warn about it. Receipted recordings go after
``keep_synced_days``, and first when the spool passes ``max_bytes`` or free
space falls below ``min_free_bytes``. Unsynced recordings are deleted only
with ``on_full = "overwrite-oldest"``; by default (``stop-and-alarm``) new
calls are refused with :class:`~linetap.firmware.spool.SpoolFull` and an
alarm is raised.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from typing import Literal

from linetap.firmware import manifest as mf
from linetap.firmware.config import segment_s_problem
from linetap.firmware.errors import SpoolError

logger = logging.getLogger(__name__)

# What retention may delete: synced, with the store's checked receipt kept (boxes with a store key),
# or synced (boxes without one, which cannot check a receipt).
RECEIPTED = "state = 'synced' AND receipt_stored_ms IS NOT NULL"
SYNCED = "state = 'synced'"


@dataclass(frozen=True)
class SpoolSettings:
    """Retention and segmenting; see :mod:`linetap.firmware.spool` for why these defaults."""

    segment_s: float = 10.0
    keep_synced_days: float = 7.0
    max_bytes: int | None = None  # None: bounded by free space only
    min_free_bytes: int = 256 * 1024 * 1024
    on_full: Literal["stop-and-alarm", "overwrite-oldest"] = "stop-and-alarm"

    def __post_init__(self) -> None:
        if self.on_full not in ("stop-and-alarm", "overwrite-oldest"):
            raise SpoolError(f"spool on_full = {self.on_full!r}; use 'stop-and-alarm' or 'overwrite-oldest'")
        if (problem := segment_s_problem(self.segment_s)) is not None:
            raise SpoolError(f"spool segment_s = {self.segment_s}; {problem}")


class Retention:
    """Retention of :class:`~linetap.firmware.spool.Spool`: one room of it, sharing its state."""

    def enforce_retention(self) -> list[str]:
        """Delete what policy allows; set or clear :attr:`fault`. Returns the purged ids."""
        purged: list[str] = []
        with self._lock:
            cutoff = mf.ms(self._clock.wall() - self.settings.keep_synced_days * 86400)
            for row in self.db.execute(f"SELECT id FROM recordings WHERE {self._deletable} AND "
                                       "synced_wall_ms < ? ORDER BY seq", (cutoff,)).fetchall():
                self._purge(row["id"], "kept-synced-days")
                purged.append(row["id"])
            while (why := self._over_limit()) is not None:
                victim = self.db.execute(f"SELECT id FROM recordings WHERE {self._deletable} "
                                         "ORDER BY seq LIMIT 1").fetchone()
                if victim is None and self.settings.on_full == "overwrite-oldest":
                    # Synced without a receipt (the centre said stored) before unsynced.
                    victim = self.db.execute("SELECT id FROM recordings WHERE state IN ('synced', 'closed') "
                                             "ORDER BY state = 'closed', seq LIMIT 1").fetchone()
                    if victim is not None:
                        logger.warning("retention overwrites unsynced recording=%s reason=%s",
                                       victim["id"], why)
                if victim is None:
                    self._set_fault(f"spool-full ({why})")
                    return purged
                self._purge(victim["id"], why)
                purged.append(victim["id"])
            self._set_fault(None)
        return purged

    @property
    def _deletable(self) -> str:
        return RECEIPTED if self.requires_receipts else SYNCED

    def purge_synced(self) -> list[str]:
        """Delete every synced recording retention may delete, whatever its age (an operator's request)."""
        with self._lock:
            rows = self.db.execute(f"SELECT id FROM recordings WHERE {self._deletable} ORDER BY seq").fetchall()
            for row in rows:
                self._purge(row["id"], "purge-synced")
            purged = [row["id"] for row in rows]
            purged += self.enforce_retention()  # recomputes the fault: freed space may clear spool-full
        return purged

    def _set_fault(self, reason: str | None) -> None:
        if reason == self.fault:
            return
        self.fault = reason
        if reason is None:
            logger.info("spool fault cleared")
            return
        logger.warning("spool alarm reason=%s", reason)
        if self._on_alarm is not None:
            self._on_alarm("spool-full", reason)

    def _used_bytes(self) -> int:
        row = self.db.execute("SELECT SUM(bytes) AS b FROM recordings WHERE state IN "
                              "('recording', 'closed', 'synced')").fetchone()
        return row["b"] or 0

    def _over_limit(self) -> str | None:
        limit = self.settings.max_bytes
        if limit is not None and (used := self._used_bytes()) > limit:
            return f"used {used} bytes > max_bytes {limit}"
        free = self._disk_free(self.root)
        if free < self.settings.min_free_bytes:
            return f"free {free} bytes < min_free_bytes {self.settings.min_free_bytes}"
        return None

    def _purge(self, recording_id: str, why: str) -> None:
        # The row says purged before files go: a crash in between leaves files recovery finishes deleting.
        self.db.execute("UPDATE recordings SET state = 'purged', note = ? WHERE id = ?", (why, recording_id))
        folder = self.layout.recording(recording_id)
        if folder.exists():
            shutil.rmtree(folder)
            self._files.sync_dir(self.root)
        logger.info("recording purged recording=%s reason=%s", recording_id, why)
