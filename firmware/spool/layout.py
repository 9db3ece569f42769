"""Where the spool keeps things and what they are called: the one owner of the on-disk layout.

Layout under the data dir::

    spool/
      catalogue.db             SQLite, WAL: recordings and segments
      chain.json               last allocated seq and the chain head (seq, manifest sha256)
      <recording-id>/
        open.json              while the call is open: seq, start, codec (caller sealed)
        000000.age ...         ciphertext segments, standard age files
        manifest.json          signed, once the call is closed
        receipt.json           the central store's signed receipt for the manifest, once synced
    quarantine/<when>-<what>/  anything recovery found that does not add up
    keys/                      see :mod:`linetap.firmware.keys`

Every other module that names a spool file asks this one: the spool's own
rooms, the central store (its object keys mirror the box's names), the card
import and the doctor. The uploader names no file at all; it reads objects
through :meth:`~linetap.firmware.spool.Spool.read_object`.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

SPOOL_DIR = "spool"
QUARANTINE_DIR = "quarantine"
CATALOGUE = "catalogue.db"
CHAIN_FILE = "chain.json"
OPEN_FILE = "open.json"
MANIFEST_FILE = "manifest.json"
RECEIPT_FILE = "receipt.json"  # the signed bytes exactly as the store sent them (linetap.firmware.receipt)
SEGMENT_SUFFIX = ".age"
TMP_SUFFIX = ".tmp"
# Bounds on what the spool reads back from disk: each is far above what the box writes.
CHAIN_MAX_BYTES = 4 * 1024
OPEN_MAX_BYTES = 64 * 1024
MANIFEST_MAX_BYTES = 8 * 1024 * 1024
RECEIPT_MAX_BYTES = 1024  # sync.receipt.MAX_BYTES; a receipt is about 450 bytes
SEGMENT_MAX_BYTES = 16 * 1024 * 1024  # 120 s at 128 kbit/s is 2 MB
MAX_SEGMENT_INDEX = 999_999  # six digits
_SEGMENT_STEM = re.compile(r"[0-9]{6}")
RECORDING_ID = re.compile(r"[0-9A-Za-z][0-9A-Za-z-]{0,63}")  # a folder name: no '.', no '/'


def segment_name(index: int) -> str:
    """The file name of segment ``index`` (``000042.age``); the central store keys segments alike."""
    return f"{index:06d}{SEGMENT_SUFFIX}"


def segment_index(name: str) -> int | None:
    """The index in a segment file name (``000042.age``): six ASCII digits, nothing else."""
    stem, dot, suffix = name.partition(".")
    if dot and "." + suffix == SEGMENT_SUFFIX and _SEGMENT_STEM.fullmatch(stem):
        return int(stem)
    return None


def is_recording_id(value: object) -> bool:
    return isinstance(value, str) and RECORDING_ID.fullmatch(value) is not None


def _stamp(wall: float) -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(wall))


@dataclass(frozen=True)
class SpoolLayout:
    """The paths of one data dir's spool and quarantine. Pure: nothing is created or read."""

    data_dir: Path

    @property
    def root(self) -> Path:
        return self.data_dir / SPOOL_DIR

    @property
    def quarantine(self) -> Path:
        return self.data_dir / QUARANTINE_DIR

    @property
    def catalogue(self) -> Path:
        return self.root / CATALOGUE

    @property
    def chain(self) -> Path:
        return self.root / CHAIN_FILE

    def is_catalogue_part(self, path: Path) -> bool:
        """The catalogue or one of SQLite's files beside it (``-wal``, ``-shm``, ``-journal``)."""
        return path.name.startswith(CATALOGUE)

    def recording(self, recording_id: str) -> Path:
        return self.root / recording_id

    def segment(self, recording_id: str, index: int) -> Path:
        return self.root / recording_id / segment_name(index)

    def manifest(self, recording_id: str) -> Path:
        return self.root / recording_id / MANIFEST_FILE

    def receipt(self, recording_id: str) -> Path:
        return self.root / recording_id / RECEIPT_FILE

    def opening(self, recording_id: str) -> Path:
        return self.root / recording_id / OPEN_FILE

    def quarantine_folder(self, wall: float, kind: str) -> Path:
        """Where recovery moves what it found at ``wall`` (seconds) of ``kind``."""
        return self.quarantine / f"{_stamp(wall)}-{kind}"

    def bad_row_note(self, wall: float, rowid: int) -> Path:
        return self.quarantine / f"{_stamp(wall)}-bad-catalogue-row-{rowid}.json"

    def row_note(self, recording_id: str, index: int | None = None) -> Path:
        """A copy of a catalogue row (a recording's, or one segment's) whose files are gone."""
        if index is None:
            return self.quarantine / f"{recording_id}.row.json"
        return self.quarantine / f"{recording_id}.{index:06d}.row.json"
