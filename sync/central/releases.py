"""The releases the central store keeps for boxes to fetch: built, listed, read chunk by chunk.

Layout under the central data dir (the format is :mod:`linetap.sync.release`)::

    releases/<release_id>/
        release.json      the signed manifest (its SHA-256 is the release id)
        release.sig       the release key's Ed25519 signature over it, 64 raw bytes
        files/<sha256>    each wheel, named by its content

A release is built in a temporary folder beside the others (every file
fsynced) and renamed into place, so a crash leaves it whole or absent
(:meth:`ReleaseStore.build`; leftovers ``.building-*`` are removed by the
next build). Building the same wheels with the same options again finds the
kept release and writes nothing: a manifest carries its creation time, so a
second copy would be a second release id for the same bytes.

Nothing from the wire names a path here unchecked: :meth:`ReleaseStore.chunk`
takes a release id and a file's SHA-256, refuses anything but 64 lower-case
hex digits, and reads only a file the signed manifest lists.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import shutil
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from linetap.firmware.durable import fsync_dir, write_all
from linetap.firmware.errors import ConfigError
from linetap.sync import release

logger = logging.getLogger(__name__)

RELEASES_DIR = "releases"
MANIFEST_FILE = "release.json"
SIGNATURE_FILE = "release.sig"
FILES_DIR = "files"
BUILDING_PREFIX = ".building-"
ANY_PREVIOUS = "0"  # --min-previous by default: a box of any version may update
OWN_WHEEL = re.compile(r"linetap-([0-9][0-9.]*)-[A-Za-z0-9_.+-]+\.whl")
CACHED_RELEASES = 16


@dataclass(frozen=True)
class KeptRelease:
    """A release in the store: its verified-format manifest and the signature beside it."""

    release: release.Release
    signature: bytes
    folder: Path

    @property
    def release_id(self) -> str:
        return self.release.release_id

    def summary(self) -> dict:
        r = self.release
        return {"version": r.version, "release_id": r.release_id, "size": r.size, "files": len(r.files),
                "created_ms": r.created_ms, "min_previous": r.min_previous, "boards": list(r.boards),
                "machine": r.machine, "python": r.python}


class ReleaseStore:
    """``<data dir>/releases``; safe to share between threads (reads only, and builds rename into place)."""

    def __init__(self, data_dir: Path) -> None:
        self.root = Path(data_dir) / RELEASES_DIR
        self._cache: OrderedDict[str, KeptRelease] = OrderedDict()
        self._lock = threading.Lock()

    # -- building --

    def build(self, key: Ed25519PrivateKey, wheels: Path, *, now_ms: int, version: str | None = None,
              min_previous: str = ANY_PREVIOUS, boards: Sequence[str] = (release.ANY_BOARD,),
              machine: str = "aarch64", python: str = "cp311") -> tuple[KeptRelease, bool]:
        """Sign and keep the release of the wheels in ``wheels``; (the release, whether it is new)."""
        paths = _wheel_files(Path(wheels))
        own = _own_version(paths)
        if version is not None and release.parse_version(version) != release.parse_version(own):
            raise ConfigError(f"--version {version} but the linetap wheel in {wheels} is version {own}")
        described = {p: release.describe_file(p.name, p.read_bytes()) for p in paths}
        wanted = _content(own, min_previous, boards, machine, python, described.values())
        for kept in self.kept():
            if _content(kept.release.version, kept.release.min_previous, kept.release.boards,
                        kept.release.machine, kept.release.python, kept.release.files) == wanted:
                return kept, False
        manifest = release.build_manifest(version=own, min_previous=min_previous, created_ms=now_ms,
                                          boards=list(boards), machine=machine, python=python,
                                          files=described.values())
        signature = release.sign(manifest, key)
        rel = release.verify(manifest, signature, [key.public_key()])
        self._clear_leftovers()
        temp = self.root / f"{BUILDING_PREFIX}{secrets.token_hex(6)}"
        (temp / FILES_DIR).mkdir(parents=True, mode=0o755)
        try:
            for path, file in described.items():
                _write_new(temp / FILES_DIR / file.sha256, path.read_bytes())
            fsync_dir(temp / FILES_DIR)
            _write_new(temp / MANIFEST_FILE, manifest)
            _write_new(temp / SIGNATURE_FILE, signature)
            fsync_dir(temp)
            os.rename(temp, self.root / rel.release_id)
            fsync_dir(self.root)
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise
        logger.info("release built version=%s release_id=%s files=%d bytes=%d", rel.version, rel.release_id,
                    len(rel.files), rel.size)
        return self.load(rel.release_id), True

    def _clear_leftovers(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o755)
        for leftover in self.root.glob(f"{BUILDING_PREFIX}*"):
            shutil.rmtree(leftover, ignore_errors=True)

    # -- reading --

    def kept(self) -> list[KeptRelease]:
        """Every release kept, oldest first; a damaged one is logged and left out."""
        if not self.root.is_dir():
            return []
        found = []
        for folder in self.root.iterdir():
            if not release.HEX64.fullmatch(folder.name):
                continue
            try:
                found.append(self.load(folder.name))
            except (release.ReleaseError, OSError) as e:
                logger.warning("release folder ignored release_id=%s reason=%s", folder.name, str(e)[:200])
        return sorted(found, key=lambda k: (k.release.created_ms, k.release_id))

    def load(self, release_id: str) -> KeptRelease:
        """The kept release ``release_id``; :class:`release.ReleaseError` when absent or damaged."""
        if not isinstance(release_id, str) or not release.HEX64.fullmatch(release_id):
            raise release.ReleaseError(f"release id {str(release_id)[:70]!r} is not 64 lower-case hex digits")
        with self._lock:
            if release_id in self._cache:
                self._cache.move_to_end(release_id)
                return self._cache[release_id]
        folder = self.root / release_id
        manifest = _read_bounded(folder / MANIFEST_FILE, release.MAX_MANIFEST, release_id)
        signature = _read_bounded(folder / SIGNATURE_FILE, release.SIGNATURE_BYTES, release_id)
        rel = release.parse_manifest(manifest)
        if rel.release_id != release_id or len(signature) != release.SIGNATURE_BYTES:
            raise release.ReleaseError(f"release {release_id[:16]}... is damaged: its manifest or signature "
                                       "is not the one built; build it again")
        kept = KeptRelease(rel, signature, folder)
        with self._lock:
            self._cache[release_id] = kept
            while len(self._cache) > CACHED_RELEASES:
                self._cache.popitem(last=False)
        return kept

    def by_version(self, version: str) -> KeptRelease:
        """The newest kept release of ``version``; ConfigError naming the versions kept when none."""
        wanted = release.parse_version(version)
        kept = self.kept()
        matching = [k for k in kept if release.parse_version(k.release.version) == wanted]
        if not matching:
            have = ", ".join(sorted({k.release.version for k in kept}, key=release.parse_version)) or "none"
            raise ConfigError(f"no release of version {version} is kept (kept: {have}); build it with "
                              "`linetap-central release build --release-key KEY --wheels DIR`")
        return matching[-1]

    def chunk(self, release_id: str, file_sha256: str, index: int) -> bytes:
        """Chunk ``index`` of a kept release's file, checked against the signed manifest."""
        if not isinstance(file_sha256, str) or not release.HEX64.fullmatch(file_sha256):
            raise release.ReleaseError("file is not 64 lower-case hex digits")
        kept = self.load(release_id)
        file = kept.release.file(file_sha256)
        offset, length = release.chunk_span(kept.release, file, index)
        with open(kept.folder / FILES_DIR / file.sha256, "rb") as f:
            f.seek(offset)
            data = f.read(length)
        if len(data) != length or hashlib.sha256(data).hexdigest()[:32] != file.chunks[index]:
            raise OSError(f"kept file {kept.folder / FILES_DIR / file.sha256} does not match its release at "
                          f"chunk {index} (disk damage?); build the release again")
        return data


def _wheel_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise ConfigError(f"--wheels {folder} is not a folder of wheels")
    paths = sorted(p for p in folder.iterdir() if p.name.endswith(".whl") and p.is_file())
    if not paths:
        raise ConfigError(f"--wheels {folder} holds no .whl files")
    if len(paths) > release.MAX_FILES:
        raise ConfigError(f"--wheels {folder} holds {len(paths)} wheels; a release carries at most "
                          f"{release.MAX_FILES}")
    return paths


def _own_version(paths: Sequence[Path]) -> str:
    own = [m.group(1) for m in (OWN_WHEEL.fullmatch(p.name) for p in paths) if m]
    if len(own) != 1:
        names = ", ".join(p.name for p in paths if p.name.startswith("linetap-")) or "none"
        raise ConfigError(f"the wheels must hold exactly one linetap-VERSION-*.whl (found {names})")
    release.parse_version(own[0])
    return own[0]


def _content(version: str, min_previous: str, boards, machine: str, python: str, files) -> tuple:
    return (version, min_previous, tuple(boards), machine, python,
            tuple(sorted((f.name, f.sha256) for f in files)))


def _write_new(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        write_all(fd, data)
    finally:
        os.close(fd)


def _read_bounded(path: Path, limit: int, release_id: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except FileNotFoundError:
        raise release.ReleaseError(f"no release {release_id[:16]}... is kept here") from None
    if len(data) > limit:
        raise release.TooLarge(f"{path} is larger than {limit} bytes")
    return data
