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
object, atomic; no append, no rename visible to callers). Putting other bytes
under a stored key replaces them (the ingest core claims every object in the
index first, so only a re-signed tombstone ever does).
:class:`FileStore` is the default, on the local file system: every write goes
to a unique temporary name, is fsynced, renamed into place and its folder
fsynced, so an object is complete or absent even when several processes
write the same key at once. :class:`~linetap.sync.central.s3store.S3Store` is
the same on an S3 bucket; :func:`open_store` picks one from ``[store]``.

Write-once storage. ``lock(key, Lock)`` retains an object until a date
(S3 object lock, governance or compliance mode; :func:`retention_lock` makes
the date from the recording's start and its retention category) and
``hold(key, on)`` sets or clears a legal hold. A lock comes after ``put``
because a recording's category (flagged or not) is known only once its
manifest is in, after its segments. The index stays the record of holds and
erasures for every store: ``FileStore.hold`` only checks the key (the index
refuses erasure of held recordings), and ``FileStore.lock`` refuses, because
a file system cannot keep the promise. ``erase`` refuses with
:class:`ObjectLocked` while a lock or hold applies, saying until when.
"""

from __future__ import annotations

import datetime as dt
import errno
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from linetap.firmware import durable
from linetap.firmware.errors import ConfigError, SyncError
from linetap.firmware.spool.layout import MANIFEST_FILE, segment_name

logger = logging.getLogger(__name__)

MANIFEST_NAME = MANIFEST_FILE  # segment and manifest objects carry the names the box gives them
TOMBSTONE_NAME = "tombstone.json"
TMP_PREFIX = ".tmp-"
OBJECTS_DIR = "objects"  # the file store's folder under the data dir
MAX_KEY_BYTES = 1024  # S3's bound on a key (UTF-8); far more than the keys below ever need
MAX_NAME_BYTES = 255  # one path component, as a file system allows
LockMode = Literal["GOVERNANCE", "COMPLIANCE"]

if TYPE_CHECKING:
    from linetap.sync.central.config import CentralConfig, StoreSection


class StoreUnavailable(SyncError, OSError):
    """The store cannot take writes right now (disk full, read-only); try again later."""


class ObjectMissing(SyncError, LookupError):
    """No object under the key asked for."""


class BadKey(SyncError, ValueError):
    """An object key that is not a plain relative path of bounded length (refused before any I/O)."""


class LockUnsupported(ConfigError):
    """The store cannot lock objects (a file system; a bucket made without object lock)."""


class ObjectLocked(SyncError, PermissionError):
    """The object is retained by an object lock or a legal hold; the message says until when."""

    def __init__(self, message: str, *, until: dt.datetime | None = None, mode: str | None = None,
                 legal_hold: bool = False) -> None:
        super().__init__(message)
        self.until = until
        self.mode = mode
        self.legal_hold = legal_hold


@dataclass(frozen=True)
class Lock:
    """Retain an object's bytes until ``until`` (aware, UTC) in ``mode``.

    GOVERNANCE: an account with the bypass permission may still shorten or
    remove it; COMPLIANCE: nobody can until the date passes.
    """

    mode: LockMode
    until: dt.datetime

    def __post_init__(self) -> None:
        if self.mode not in ("GOVERNANCE", "COMPLIANCE"):
            raise ConfigError(f"object lock mode {self.mode!r} is neither GOVERNANCE nor COMPLIANCE")
        if self.until.tzinfo is None:
            raise ConfigError(f"object lock date {self.until} has no time zone; give it in UTC")

    def describe(self) -> str:
        return f"retained until {iso_utc(self.until)} in {self.mode} mode"


def iso_utc(moment: dt.datetime) -> str:
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def retention_lock(mode: str, started_ms: int, days: int, *, now_ms: int | None = None) -> Lock | None:
    """The lock of a recording that started at ``started_ms`` and is kept ``days`` ([retention] category).

    None when locking is off (``mode`` "off"), when the category keeps
    recordings for ever (0 days: an object lock needs a date; the index keeps
    them), or when that date is already past at ``now_ms`` (an old backlog, a
    card imported late, a box clock far behind): S3 refuses a retain-until in
    the past, and the recording is due to `retention run` anyway.
    """
    if mode == "off" or days == 0:
        return None
    start = dt.datetime.fromtimestamp(started_ms / 1000, dt.timezone.utc)
    until = start + dt.timedelta(days=days)
    if now_ms is not None and until <= dt.datetime.fromtimestamp(now_ms / 1000, dt.timezone.utc):
        return None
    return Lock(mode.upper(), until)  # type: ignore[arg-type]


def check_key(key: str) -> list[str]:
    """The parts of ``key``; :class:`BadKey` unless it is a plain relative path a bucket and a file system share."""
    if not isinstance(key, str) or not key:
        raise BadKey(f"object key {key!r} is empty or not text")
    size = len(key.encode("utf-8", "surrogatepass"))
    if size > MAX_KEY_BYTES:
        raise BadKey(f"object key {key[:40]!r}... is {size} bytes; at most {MAX_KEY_BYTES} are allowed")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
        raise BadKey(f"object key {key[:80]!r} holds a control character (NUL, newline...); keys are plain paths")
    parts = key.split("/")
    if any(p in ("", ".", "..") or p.startswith(TMP_PREFIX) or len(p.encode("utf-8", "surrogatepass")) >
           MAX_NAME_BYTES for p in parts):
        raise BadKey(f"object key {key[:80]!r} is not a plain relative path (no leading /, empty, . or .. "
                     f"parts, parts of at most {MAX_NAME_BYTES} bytes)")
    return parts


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
        """Overwrite the object's bytes where the medium allows it, then delete it (absent: no-op).

        Every stored version goes. Raises :class:`ObjectLocked` (nothing deleted) while a lock or hold applies.
        """

    def retained(self, key: str) -> ObjectLocked | None:
        """Why ``erase(key)`` would be refused now (a lock or legal hold), or None; asks, deletes nothing.

        For a caller that must know before it acts (retention writes the tombstone before erasing).
        """

    def lock(self, key: str, lock: Lock) -> None:
        """Retain the stored object as ``lock`` says; never shortens or weakens a lock already there.

        :class:`ObjectMissing` without an object, :class:`LockUnsupported` where the store cannot lock.
        """

    def hold(self, key: str, on: bool) -> None:
        """Set (``on``) or clear the legal hold on the object where the store enforces one.

        :class:`ObjectMissing` without an object. The index records holds for every store.
        """


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


def redaction_key(device_id: str, recording_id: str, name: str) -> str:
    """A redacted copy's objects (analytics/redact.py): beside the original, in no index row, so erasing it keeps them."""
    return f"{recording_prefix(device_id, recording_id)}/redacted/{name}"


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
        return self.root.joinpath(*check_key(key))

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

    def lock(self, key: str, lock: Lock) -> None:
        """Refused: a file system cannot keep an object-lock promise (the index's retention still applies)."""
        check_key(key)
        raise LockUnsupported(f"the file store {self.root} cannot lock {key} ({lock.describe()}): set [store] "
                              "url to an S3 bucket made with object lock, or object_lock = \"off\"")

    def retained(self, key: str) -> ObjectLocked | None:
        """Never: a file is not locked (the index's legal hold is checked by retention)."""
        check_key(key)
        return None

    def hold(self, key: str, on: bool) -> None:
        """Nothing to set on a file: the index keeps the hold and erasure refuses held recordings."""
        if not self.exists(key):
            raise ObjectMissing(f"object {key} is not in the store {self.root}")


def open_store(config: CentralConfig | StoreSection | None, data_dir: Path, *,
               files: DurableFiles | None = None) -> ObjectStore:
    """The object store ``[store]`` names (a whole config or its section; None: the defaults): an S3
    bucket, or the files under ``<data_dir>/objects`` written through ``files``.

    Opening makes no request: a process may open its store before the server is up (a worker
    process opens its own, a client does not cross a process boundary).
    """
    section = getattr(config, "store", config)
    if section is None or section.url is None:
        return FileStore(Path(data_dir) / OBJECTS_DIR, files=files)
    from linetap.sync.central.s3store import S3Store  # boto3 only when a bucket is configured

    return S3Store.from_config(section, Path(data_dir))
