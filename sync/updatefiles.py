"""The box's update folder, ``<box data>/update/``: what the fetch keeps, and how it is written.

Layout (the box user's; the hand-over files to root are :mod:`linetap.sync.appslots`'s)::

    update/
      offer.json            {"envelope": <the accepted offer's envelope text> | null, "seq": n}
      state.json            the last update/state published (updatewire.state_payload)
      files/<sha256>        fetched files, complete and checked (content addressed)
      files/<sha256>.part   a file being fetched: chunks written at their offsets
      files/<sha256>.have   the chunk indexes written to .part, 4 bytes each, appended and fsynced
      staged/<release_id>/  release.json, release.sig, offer.env, a link (or copy) of each file
      request.json, switch.json, healthy.json, unhealthy.json      (appslots)

Order that makes a fetch resumable: a chunk's bytes are written to ``.part``
and fsynced before its index is appended to ``.have`` and fsynced, so an
index in ``.have`` always names bytes on disk; a torn last entry (a power
cut mid-append) is ignored. A complete file is hashed whole before it is
renamed to ``files/<sha256>``. Everything else is written whole
(:mod:`linetap.firmware.durable`). Every file here is read as hostile:
bounded, parsed by :func:`linetap.firmware.untrusted.loads`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from linetap.firmware.durable import DurableFiles, fsync_dir
from linetap.firmware.manifest import canonical
from linetap.firmware.untrusted import MAX_SAFE_INT, Untrusted, loads
from linetap.sync import appslots, release, updatewire
from linetap.sync.updateevents import Saved, Stage
from linetap.sync.updatewire import UpdateState

logger = logging.getLogger(__name__)

OFFER = "offer.json"
STATE = "state.json"
FILES = "files"
PART = ".part"
HAVE = ".have"
MAX_OFFER_FILE = updatewire.MAX_OFFER_BYTES * 2 + 1024  # the envelope as a JSON string, escapes and all
FACTORY_WHEELS = Path("/opt/linetap/wheels")
_INDEX = 4
_HASH_BLOCK = 1 << 20
_WRITE = DurableFiles(mode=0o644)


class UpdateFiles:
    """``<box data>/update/`` and where the box finds files it already has. One thread uses it."""

    def __init__(self, data_dir: Path, *, app_root: Path, factory_wheels: Path = FACTORY_WHEELS) -> None:
        self.data_dir = Path(data_dir)
        self.folder = appslots.update_dir(data_dir)
        self.files = self.folder / FILES
        self.app_root = Path(app_root)
        self.factory_wheels = Path(factory_wheels)
        self._hashed: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256 of a factory wheel

    # -- what the box kept --

    def load(self) -> Saved:
        """What a restart left: the accepted offer, the last state, the chunks written, root's trial and outcome."""
        offer, seq = self._read_offer()
        state = self._read_state()
        partial = {p.name[:-len(HAVE)]: self.read_have(p.name[:-len(HAVE)])
                   for p in self._listing() if p.name.endswith(HAVE) and release.HEX64.fullmatch(p.name[:64])}
        trial = outcome = None
        try:
            running = appslots.read_trial(self.app_root)
            trial = running.version if running is not None else None
            outcome = appslots.read_outcome(self.app_root)
        except appslots.SlotFileError as e:
            logger.error("update: root's files unreadable reason=%s", e)
        return Saved(offer=offer, seq=seq, state=state, partial=partial, trial=trial, finished=outcome)

    def _read_offer(self) -> tuple[bytes | None, int]:
        try:
            data = appslots.read_bounded(self.folder / OFFER, max_bytes=MAX_OFFER_FILE)
            if data is None:
                return None, 0
            value = loads(data, what=str(self.folder / OFFER), max_bytes=MAX_OFFER_FILE, max_depth=1)
            envelope, seq = value["envelope"], value["seq"]
            if not (envelope is None or isinstance(envelope, str)) or not isinstance(seq, int) \
                    or not 0 <= seq <= MAX_SAFE_INT:
                raise Untrusted("envelope is not a text or null, or seq is not a whole number")
        except (Untrusted, KeyError, TypeError) as e:
            logger.error("update: kept offer %s unreadable, forgotten reason=%s", self.folder / OFFER, e)
            return None, 0
        return (None if envelope is None else envelope.encode("utf-8")), seq

    def _read_state(self) -> UpdateState | None:
        try:
            data = appslots.read_bounded(self.folder / STATE, max_bytes=updatewire.MAX_STATE_BYTES)
            return None if data is None else updatewire.read_state(data)
        except (Untrusted, release.ReleaseError) as e:
            logger.error("update: kept state unreadable, forgotten reason=%s", e)
            return None

    def save_offer(self, payload: bytes | None, seq: int) -> None:
        value = {"envelope": None if payload is None else payload.decode("utf-8"), "seq": seq}
        self.folder.mkdir(parents=True, exist_ok=True)
        _WRITE.write(self.folder / OFFER, canonical(value))

    def save_state(self, state: UpdateState) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        _WRITE.write(self.folder / STATE, updatewire.state_payload(state))

    # -- fetching --

    def _listing(self) -> list[Path]:
        try:
            return list(self.files.iterdir())
        except FileNotFoundError:
            return []

    def read_have(self, sha: str) -> frozenset[int]:
        path = self.files / f"{sha}{HAVE}"
        try:
            data = appslots.read_bounded(path, max_bytes=_INDEX * release.MAX_FILE_SIZE // release.MIN_CHUNK_SIZE)
        except Untrusted as e:
            logger.error("update: %s, fetched again", e)
            return frozenset()
        data = data or b""
        whole = len(data) - len(data) % _INDEX  # a torn last entry names no chunk
        return frozenset(int.from_bytes(data[at:at + _INDEX], "big") for at in range(0, whole, _INDEX))

    def write_chunk(self, sha: str, index: int, offset: int, data: bytes) -> None:
        """The chunk's bytes into ``.part`` (fsynced), then its index into ``.have`` (fsynced)."""
        self.files.mkdir(parents=True, exist_ok=True)
        part = self.files / f"{sha}{PART}"
        created = not part.exists()
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.pwrite(fd, view, offset + len(data) - len(view)):]
            os.fsync(fd)
        finally:
            os.close(fd)
        fd = os.open(self.files / f"{sha}{HAVE}", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o644)
        try:
            os.write(fd, index.to_bytes(_INDEX, "big"))
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            fsync_dir(self.files)

    def check_file(self, sha: str, size: int) -> bool:
        """Hash ``.part`` whole; when it is ``sha`` of ``size`` bytes, rename it to ``files/<sha>``."""
        part = self.files / f"{sha}{PART}"
        digest, total = hashlib.sha256(), 0
        try:
            with open(part, "rb") as f:
                while total <= size and (block := f.read(_HASH_BLOCK)):
                    digest.update(block)
                    total += len(block)
        except OSError as e:
            logger.error("update: %s cannot be read: %s", part, e.strerror)
            return False
        if total != size or digest.hexdigest() != sha:
            return False
        os.replace(part, self.files / sha)
        (self.files / f"{sha}{HAVE}").unlink(missing_ok=True)
        fsync_dir(self.files)
        return True

    def discard(self, shas: Iterable[str]) -> None:
        for sha in shas:
            for suffix in (PART, HAVE):
                (self.files / f"{sha}{suffix}").unlink(missing_ok=True)

    # -- what the box has --

    def on_hand(self) -> dict[str, Path]:
        """Files by sha256 the box need not fetch: fetched, kept by root for its versions, and the factory's."""
        found: dict[str, Path] = {}
        for path in sorted(self.factory_wheels.glob("*.whl")) if self.factory_wheels.is_dir() else []:
            found.setdefault(self._factory_sha(path), path)
        versions = self.app_root / appslots.VERSIONS
        for path in sorted(versions.glob(f"*/{appslots.WHEELS}/*")) if versions.is_dir() else []:
            if release.HEX64.fullmatch(path.name) and path.is_file():
                found[path.name] = path
        for path in self._listing():
            if release.HEX64.fullmatch(path.name):
                found[path.name] = path
        return found

    def _factory_sha(self, path: Path) -> str:
        info = path.stat()
        key = (str(path), info.st_size, info.st_mtime_ns)
        if key not in self._hashed:
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                while block := f.read(_HASH_BLOCK):
                    digest.update(block)
            self._hashed[key] = digest.hexdigest()
        return self._hashed[key]

    def free_bytes(self) -> int:
        self.folder.mkdir(parents=True, exist_ok=True)
        stats = os.statvfs(self.folder)
        return stats.f_bavail * stats.f_frsize

    # -- staging, for root --

    def stage(self, action: Stage, now_ms: int) -> None:
        """``staged/<id>/`` made whole under a temporary name and renamed; then ``request.json``."""
        rel = action.release
        final = appslots.staged_dir(self.data_dir, rel.release_id)
        tmp = final.with_name(f".{final.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        on_hand = self.on_hand()
        for name, data in ((appslots.STAGED_MANIFEST, rel.data), (appslots.STAGED_SIGNATURE, action.signature),
                           (appslots.STAGED_OFFER, action.offer or None)):
            if data is not None:
                _WRITE.write(tmp / name, data)
        for f in rel.files:
            _link_or_copy(on_hand[f.sha256], tmp / f.sha256)
        fsync_dir(tmp)
        for other in final.parent.iterdir():  # an older release staged: superseded
            if other.name != final.name and other != tmp:
                shutil.rmtree(other, ignore_errors=True)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        fsync_dir(final.parent)
        appslots.write_request(self.data_dir, appslots.Request(release_id=rel.release_id, version=rel.version,
                                                               allow_downgrade=action.allow_downgrade, at_ms=now_ms))

    def unstage(self, release_id: str) -> None:
        appslots.remove(self.folder / appslots.REQUEST)
        shutil.rmtree(appslots.staged_dir(self.data_dir, release_id), ignore_errors=True)

    def clean(self) -> None:
        """After an outcome: the fetched files and the staging go (root keeps what it installed)."""
        shutil.rmtree(self.files, ignore_errors=True)
        shutil.rmtree(self.folder / appslots.STAGED, ignore_errors=True)
        appslots.remove(self.folder / appslots.REQUEST)
        appslots.remove(self.folder / appslots.SWITCH)


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system, or a root-owned file the box user may not link
        shutil.copyfile(source, target)
        fd = os.open(target, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
