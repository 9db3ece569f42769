"""The :class:`Spool`: wires the rooms of the package around one catalogue connection and its lock."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from linetap.firmware.clock import Clock
from linetap.firmware.durable import DurableFiles
from linetap.firmware.errors import SpoolError
from linetap.firmware.keys import load_recipient, load_signing_key, load_store_keys
from linetap.firmware.spool.backlog import SyncMarks
from linetap.firmware.spool.layout import SpoolLayout
from linetap.firmware.spool.recovery import Recovery, RecoveryReport
from linetap.firmware.spool.retention import Retention, SpoolSettings
from linetap.firmware.spool.writer import SpoolWriter


def _disk_free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class Spool(SpoolWriter, SyncMarks, Retention, Recovery):
    """The on-box store of encrypted recordings. Opening it runs recovery.

    ``recovery`` holds what start-up found. Raises
    :class:`~linetap.firmware.keys.KeyMissing` without a recipient or signing
    key: the box must not record what it cannot encrypt and sign.

    Threads: the call thread writes (:class:`~linetap.firmware.spool.SpoolSink`),
    the uploader thread reads the backlog and marks it; one lock serialises
    the catalogue.
    """

    def __init__(self, data_dir: Path, *, device_id: str, clock: Clock,
                 settings: SpoolSettings = SpoolSettings(), files: DurableFiles | None = None,
                 disk_free: Callable[[Path], int] = _disk_free,
                 on_alarm: Callable[[str, str], None] | None = None) -> None:
        self.layout = SpoolLayout(Path(data_dir))
        self.data_dir = self.layout.data_dir
        self.root = self.layout.root
        self.device_id = device_id
        self.settings = settings
        self._clock = clock
        self._files = files or DurableFiles()
        self._disk_free = disk_free
        self._on_alarm = on_alarm
        self._recipient = load_recipient(self.data_dir)
        self._key: Ed25519PrivateKey = load_signing_key(self.data_dir)
        # Only a box that can check the store's receipts waits for one before deleting (retention.py).
        self.requires_receipts = bool(load_store_keys(self.data_dir))
        self.public_key: Ed25519PublicKey = self._key.public_key()
        self._lock = threading.RLock()
        self._db: sqlite3.Connection | None = None
        self.fault: str | None = None  # why new calls are refused, for the Fault event
        self.recovery = RecoveryReport()
        self._make_root()
        self._recover()
        self.enforce_retention()

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise SpoolError(f"spool {self.root} is closed")
        return self._db

    def status(self) -> dict[str, Any]:
        """Figures for telemetry and the birth message."""
        with self._lock:
            rows = self.db.execute("SELECT state, COUNT(*) AS n, SUM(bytes) AS b FROM recordings "
                                   "GROUP BY state").fetchall()
            unreceipted = self.db.execute("SELECT COUNT(*) FROM recordings WHERE state = 'synced' AND "
                                          "receipt_stored_ms IS NULL").fetchone()[0]
        return {"by_state": {r["state"]: {"recordings": r["n"], "bytes": r["b"] or 0} for r in rows},
                "synced_without_receipt": unreceipted,  # kept: retention deletes only receipted recordings
                "used_bytes": self._used_bytes(), "free_bytes": self._disk_free(self.root),
                "fault": self.fault}

