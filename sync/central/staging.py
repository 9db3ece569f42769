"""Staging: parts of multi-part objects, and manifests waiting for their segments, until they complete.

Where the bytes wait depends on the index. A shared index (PostgreSQL, which
several ingest hosts reach: ``index.shared``) keeps them in the staging rows
themselves (:mod:`~linetap.sync.central.stagedparts`): the parts of one
object may reach different hosts, each with its own ``data_dir``, and
whichever host stages the last one reads them all back from the index and
joins them. The object store never sees a staged part, so staging is never
under object lock and is removed as soon as its object is stored (ARCHITECTURE.md
§11 says why the index and not the bucket). The embedded index (SQLite, one
host) keeps them in files as it always did.

Layout of file staging under ``<data_dir>/staging/``::

    <device>/<recording>/<object>/<sha256>/<part>   a staged part (object ``seg/3`` is folder ``seg-3``)
    <device>/<recording>/pending-manifest           a manifest waiting for segments

Every staged file has a row in the index (``Index.stage``) written before the
file, so a device's staging is summed for its quota and aged out without
walking the file system; files the index does not know (left by a crash
mid-write, or by a version before the index tracked staging) are aged out by
their modification time. Several workers may stage, join and remove the same
object at once: each step tolerates another having done it first.
"""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from linetap.firmware import manifest as mf
from linetap.sync import wire
from linetap.sync.central.index import PENDING_MANIFEST, Index
from linetap.sync.central.store import TMP_PREFIX, DurableFiles

logger = logging.getLogger(__name__)

STAGING_DIR = "staging"


@dataclass(frozen=True)
class AgedOut:
    """Staging removed by :meth:`Staging.age_out`: an object that never completed, or a waiting manifest."""

    device_id: str
    recording_id: str
    object: str  # seg/<i>, manifest, or pending-manifest
    bytes: int
    last_ms: int  # when its newest part was staged

    def as_dict(self) -> dict[str, Any]:
        return {"device_id": self.device_id, "recording_id": self.recording_id, "object": self.object,
                "bytes": self.bytes, "last_ms": self.last_ms}


class Staging:
    """Staged bytes in ``index`` when it is shared, else in the staging folder under ``data_dir`` (files
    written by ``files``); their rows in ``index`` either way. ``in_index`` overrides the choice."""

    def __init__(self, data_dir: Path, index: Index, files: DurableFiles, *, in_index: bool | None = None) -> None:
        self.root = Path(data_dir) / STAGING_DIR
        self._index = index
        self._files = files
        self.in_index = bool(getattr(index, "shared", False)) if in_index is None else in_index

    # -- parts --

    def put_part(self, part: wire.Part, now_ms: int) -> None:
        """Stage one part durably. In files, the row first, so a crash between the two leaves a row (aged out);
        in the index, row and bytes are one statement."""
        device, rid, name = part.device_id, part.recording_id, str(part.object)
        if self.in_index:
            self._index.stage_part(device, rid, name, part.sha256, part.part, part.payload, now_ms)
            return
        self._index.stage(device, rid, name, part.sha256, part.part, len(part.payload), now_ms)
        self._files.write(self._object_staging(part) / f"{part.part:04d}", part.payload)

    def assemble(self, part: wire.Part) -> bytes | wire.WireError | None:
        """The joined object once every part is staged; None while parts are missing."""
        pieces = self._index_pieces(part) if self.in_index else self._file_pieces(part)
        if pieces is None:
            return None
        try:
            return wire.join(pieces, part.sha256, part.size)
        except wire.WireError as e:
            return e

    def _index_pieces(self, part: wire.Part) -> list[bytes] | None:
        key = (part.device_id, part.recording_id, str(part.object), part.sha256)
        if self._index.staged_count(*key) < part.parts:
            return None  # counted first: the bytes are read once, by whoever staged the last part
        staged = self._index.staged_parts(*key)
        if [k for k, _ in staged] != list(range(part.parts)):
            return None  # joined and removed by another worker meanwhile
        return [data for _, data in staged]

    def _file_pieces(self, part: wire.Part) -> list[bytes] | None:
        folder = self._object_staging(part)
        names = sorted(p.name for p in folder.iterdir() if not p.name.startswith(TMP_PREFIX))
        if len(names) < part.parts:
            return None
        try:
            return [(folder / f"{k:04d}").read_bytes() for k in range(part.parts)]
        except FileNotFoundError:  # another worker joined and removed the staging meanwhile
            return None

    def drop(self, part: wire.Part) -> None:
        if not self.in_index:
            self._remove_tree(self._object_staging(part))
        self._index.unstage(part.device_id, part.recording_id, str(part.object), part.sha256)

    # -- waiting manifests --

    def put_pending(self, device_id: str, recording_id: str, data: bytes, now_ms: int) -> None:
        digest = mf.manifest_hash(data)
        if self.in_index:
            self._index.stage_part(device_id, recording_id, PENDING_MANIFEST, digest, 0, data, now_ms)
            return
        self._index.stage(device_id, recording_id, PENDING_MANIFEST, digest, 0, len(data), now_ms)
        self._files.write(self._pending(device_id, recording_id), data)

    def pending(self, device_id: str, recording_id: str) -> bytes | None:
        """The manifest waiting for this recording's segments, if any."""
        if self.in_index:
            return self._index.staged_pending(device_id, recording_id)
        path = self._pending(device_id, recording_id)
        if not path.exists():
            return None
        try:
            return path.read_bytes()
        except FileNotFoundError:  # finished by another worker a moment ago
            return None

    def drop_pending(self, device_id: str, recording_id: str) -> None:
        if not self.in_index:
            self._remove_file(self._pending(device_id, recording_id))
        self._index.unstage(device_id, recording_id, PENDING_MANIFEST)

    # -- ageing out --

    def age_out(self, cutoff_ms: int) -> list[AgedOut]:
        """Remove staging untouched since ``cutoff_ms``; each removal is logged and returned."""
        removed = []
        for row in self._index.staged(older_than_ms=cutoff_ms):
            device, rid, name, sha256 = row["device_id"], row["recording_id"], row["name"], row["sha256"]
            if name == PENDING_MANIFEST:
                self._remove_file(self._pending(device, rid))
            else:
                self._remove_tree(self._object_folder(device, rid, name, sha256))
            self._index.unstage(device, rid, name, sha256)
            item = AgedOut(device, rid, name, int(row["bytes"]), int(row["last_ms"]))
            logger.warning("stale staging removed device=%s recording=%s object=%s bytes=%d last_ms=%d",
                           device, rid, name, item.bytes, item.last_ms)
            removed.append(item)
        return removed + self._age_out_untracked(cutoff_ms)

    def _age_out_untracked(self, cutoff_ms: int) -> list[AgedOut]:
        tracked = {(r["device_id"], r["recording_id"], r["name"].replace("/", "-"), r["sha256"])
                   for r in self._index.staged()}
        pending = {(device, rid) for device, rid, name, _ in tracked if name == PENDING_MANIFEST}
        removed = []
        for path in sorted(p for p in self.root.rglob("*") if p.is_file() and not p.is_symlink()):
            levels = path.relative_to(self.root).parts
            try:
                info = path.stat()
            except FileNotFoundError:
                continue
            if info.st_mtime * 1000 >= cutoff_ms:
                continue
            device, rid = (levels + ("?", "?"))[:2]
            if len(levels) == 5 and levels[:4] in tracked:
                continue
            if len(levels) == 3 and levels[2] == PENDING_MANIFEST and (device, rid) in pending:
                continue
            obj = levels[2].replace("-", "/", 1) if len(levels) >= 3 else path.name
            self._remove_file(path)
            item = AgedOut(device, rid, obj, info.st_size, round(info.st_mtime * 1000))
            logger.warning("stale staging removed device=%s recording=%s object=%s bytes=%d file=%s "
                           "(not in the index)", device, rid, obj, info.st_size, path)
            removed.append(item)
        return removed

    # -- layout --

    def _recording_folder(self, device_id: str, recording_id: str) -> Path:
        return self.root / device_id / recording_id

    def _pending(self, device_id: str, recording_id: str) -> Path:
        return self._recording_folder(device_id, recording_id) / PENDING_MANIFEST

    def _object_folder(self, device_id: str, recording_id: str, name: str, sha256: str) -> Path:
        return self._recording_folder(device_id, recording_id) / name.replace("/", "-") / sha256

    def _object_staging(self, part: wire.Part) -> Path:
        return self._object_folder(part.device_id, part.recording_id, str(part.object), part.sha256)

    def _remove_file(self, path: Path) -> None:
        """Remove a staged file and its empty parent folders."""
        path.unlink(missing_ok=True)
        self._remove_empty(path.parent)

    def _remove_tree(self, folder: Path) -> None:
        """Remove a staging folder and its empty parents; another worker may be doing the same."""
        try:
            entries = list(folder.iterdir())
        except FileNotFoundError:
            return
        for entry in entries:
            entry.unlink(missing_ok=True)
        self._remove_empty(folder)

    def _remove_empty(self, folder: Path) -> None:
        for path in (folder, *folder.parents):
            if path.name == STAGING_DIR:
                break
            try:
                path.rmdir()
            except FileNotFoundError:
                continue
            except OSError as e:
                if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    break
                raise
