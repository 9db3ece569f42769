"""The central object store: whole objects, written durably, named by device and date.

An object is the exact bytes a box uploaded (an age segment or a signed
manifest) or a tombstone the centre wrote. Keys are relative paths::

    <device>/<YYYY>/<MM>/<DD>/<recording-id>/000000.age
    <device>/<YYYY>/<MM>/<DD>/<recording-id>/manifest.json
    <device>/<YYYY>/<MM>/<DD>/<recording-id>/tombstone.json

The date is the UTC day of the recording id's UUIDv7 millisecond timestamp,
so every object of a recording lands in one folder whichever part arrived
first, without a manifest to read. A recording id that is not version 7 is
filed under ``undated``.

:class:`ObjectStore` is the interface the ingest core and the tools use; it
has nothing a bucket of an S3-compatible store could not do (put is a whole
object, atomic; no append, no rename visible to callers).
:class:`FileStore` is the default, on the local file system: every write goes
to a unique temporary name, is fsynced, renamed into place and its folder
fsynced, so an object is complete or absent even when several processes
write the same key at once.
"""

from __future__ import annotations

import datetime as dt
import errno
import logging
import os
import uuid
from pathlib import Path
from typing import Protocol

from linetap.firmware import durable
from linetap.firmware.errors import SyncError
from linetap.firmware.spool.layout import MANIFEST_FILE, segment_name

logger = logging.getLogger(__name__)

MANIFEST_NAME = MANIFEST_FILE  # segment and manifest objects carry the names the box gives them
TOMBSTONE_NAME = "tombstone.json"
TMP_PREFIX = ".tmp-"


class StoreUnavailable(SyncError, OSError):
    """The store cannot take writes right now (disk full, read-only); try again later."""


class ObjectMissing(SyncError, LookupError):
    """No object under the key asked for."""


class ObjectStore(Protocol):
    """Where recordings' bytes live. Every method is safe to call from several threads and processes."""

    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` durably and atomically (replacing an equal object is harmless).

        Raises :class:`StoreUnavailable` when the store cannot take it; nothing is half-written.
        """

    def get(self, key: str) -> bytes:
        """The object's bytes; :class:`ObjectMissing` if there is none."""

    def exists(self, key: str) -> bool:
        """True when an object is stored under ``key``."""

    def erase(self, key: str) -> None:
        """Overwrite the object's bytes where the medium allows it, then delete it (absent: no-op)."""


def recording_day(recording_id: str) -> str:
    """``YYYY/MM/DD`` (UTC) of a UUIDv7 recording id, or ``undated`` for other UUID versions."""
    try:
        value = uuid.UUID(recording_id)
    except ValueError:
        return "undated"
    if value.version != 7:
        return "undated"
    day = dt.datetime.fromtimestamp((value.int >> 80) / 1000, dt.timezone.utc)
    return day.strftime("%Y/%m/%d")


def recording_prefix(device_id: str, recording_id: str) -> str:
    return f"{device_id}/{recording_day(recording_id)}/{recording_id}"


def segment_key(device_id: str, recording_id: str, index: int) -> str:
    return f"{recording_prefix(device_id, recording_id)}/{segment_name(index)}"


def manifest_key(device_id: str, recording_id: str) -> str:
    return f"{recording_prefix(device_id, recording_id)}/{MANIFEST_NAME}"


def tombstone_key(device_id: str, recording_id: str) -> str:
    return f"{recording_prefix(device_id, recording_id)}/{TOMBSTONE_NAME}"


def is_full(error: OSError) -> bool:
    return error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


class DurableFiles(durable.DurableFiles):
    """Durable writes safe when several writers race on one path (the centre's workers).

    The temporary name is unique per process and thread, so two workers
    storing the same object never write into each other's file. A
    constructor argument of :class:`FileStore` and the ingest staging, so
    tests can make it fail the way a full disk does.
    """

    def __init__(self) -> None:
        super().__init__(temp_prefix=TMP_PREFIX, temp_suffix="", unique_temp=True)

    def write(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        super().write(path, data)


class FileStore:
    """:class:`ObjectStore` on a local file system under ``root``."""

    def __init__(self, root: Path, *, files: DurableFiles | None = None) -> None:
        self.root = Path(root)
        self._files = files or DurableFiles()

    def path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or any(p in ("", ".", "..") or p.startswith(TMP_PREFIX) for p in parts):
            raise SyncError(f"object key {key!r} is not a plain relative path")
        return self.root.joinpath(*parts)

    def put(self, key: str, data: bytes) -> None:
        path = self.path(key)
        try:
            self._files.write(path, data)
        except OSError as e:
            if is_full(e):
                raise StoreUnavailable(f"object store {self.root} cannot store {key} ({len(data)} bytes): "
                                       f"{e.strerror}; free space on it, the sender will retry") from e
            raise

    def get(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError:
            raise ObjectMissing(f"object {key} is not in the store {self.root}") from None

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def erase(self, key: str) -> None:
        path = self.path(key)
        try:
            fd = os.open(path, os.O_WRONLY)
        except FileNotFoundError:
            return
        try:
            size = os.fstat(fd).st_size
            zeros = bytes(min(size, 1 << 20))
            written = 0
            while written < size:
                written += os.write(fd, zeros[:size - written])
            os.fsync(fd)
        finally:
            os.close(fd)
        path.unlink(missing_ok=True)
        self._files.sync_dir(path.parent)
        logger.info("object erased key=%s bytes=%d", key, size)
