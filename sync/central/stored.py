"""What the central store holds, read back checked: the ground every operator tool stands on.

:class:`Stored` opens the object store and index under a data dir the same
way the ingest core does, so a tool may run while ``serve`` ingests. It finds
a recording by id (asking for the device when two have that id) and reads its
manifest and segments back only after checking them against the index and the
device's enrolled key. The jobs built on it each have their module:
:mod:`~linetap.sync.central.export`, :mod:`~linetap.sync.central.importer`,
:mod:`~linetap.sync.central.verify` and :mod:`~linetap.sync.central.retention`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from linetap.firmware import manifest as mf
from linetap.firmware.clock import Clock, SystemClock
from linetap.firmware.errors import AuthError
from linetap.firmware.keys import public_key_from_b64
from linetap.sync.central.config import CentralConfig, IndexSection, load_config
from linetap.sync.central.index import Index, UnknownRecording
from linetap.sync.central.indexes import open_index
from linetap.sync.central.store import ObjectStore, open_store, segment_key


class IntegrityError(AuthError):
    """A stored object does not match what its manifest or index row says (altered or lost)."""


class Stored:
    """The object store and index ``config`` names (default: ``<data_dir>/central.toml`` when there is
    one, else the files and SQLite index in ``data_dir``); ``store``, ``index`` and ``index_config``
    replace the config's. ``close()`` releases the index."""

    def __init__(self, data_dir: Path, *, clock: Clock | None = None, store: ObjectStore | None = None,
                 index: Index | None = None, index_config: IndexSection | None = None,
                 config: CentralConfig | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.clock = clock or SystemClock()
        self.config = config or load_config(None, self.data_dir)
        self.store: ObjectStore = store or open_store(self.config, self.data_dir)
        self._owns_index = index is None
        self.index: Index = index or open_index(index_config or self.config.index, self.data_dir)

    def close(self) -> None:
        if self._owns_index:
            self.index.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def recording(self, recording_id: str, device_id: str | None = None) -> dict[str, Any]:
        """The recording of that id (of ``device_id`` when given); raises when there is none, or when
        several devices have one and ``device_id`` is not given (:class:`AmbiguousRecording`)."""
        row = self.index.recording(recording_id, device_id)
        if row is None:
            of = f" of device {device_id}" if device_id is not None else ""
            raise UnknownRecording(f"recording {recording_id}{of} is not in the index of {self.data_dir}; "
                                   "`linetap-central list` shows the ids")
        return row

    def checked_manifest(self, row: dict[str, Any]) -> dict[str, Any]:
        data = self.store.get(row["manifest_key"])
        if hashlib.sha256(data).hexdigest() != row["manifest_sha256"]:
            raise IntegrityError(f"manifest of recording {row['recording_id']} was altered after ingest "
                                 "(its sha256 differs from the index); run `linetap-central verify`")
        key_b64 = self.index.device_key(row["device_id"])
        if key_b64 is None:
            raise AuthError(f"device {row['device_id']} is no longer enrolled; its manifests cannot be checked")
        return mf.verify(data, public_key_from_b64(key_b64))

    def checked_segment(self, row: dict[str, Any], entry: dict[str, Any]) -> bytes:
        key = segment_key(row["device_id"], row["recording_id"], entry["index"])
        data = self.store.get(key)
        if len(data) != entry["bytes"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise IntegrityError(f"segment {entry['index']} of recording {row['recording_id']} ({key}) does "
                                 "not match the sha256 and size its manifest lists: altered or damaged")
        return data

    def now_ms(self) -> int:
        return round(self.clock.wall() * 1000)
