"""Reading an evidence bundle someone hands us: a zip treated as hostile.

Before anything is read: the file is a regular file, the zip's directory
has at most :data:`~evidence_format.MAX_MEMBERS` entries, every name is a
plain relative path of the bundle's shape (no absolute path, no ``..``, no
backslash, no name twice, no folder entries), and every declared size and
their total are bounded. Members are stored or deflated only. A member is
read whole only up to :data:`~evidence_format.MAX_SMALL`; the audio is hashed
as a stream. Python's zip reader stops at a member's declared size and checks
its CRC, so a zip bomb costs no more than the bounds allow. What breaks a
bound is :class:`BundleUnusable` (exit 2), naming it.
"""

from __future__ import annotations

import hashlib
import stat
import zipfile
from pathlib import Path

from linetap.firmware.errors import ConfigError
from linetap.sync.central import evidence_format as ef

CHUNK = 1 << 20


class BundleUnusable(ConfigError, ValueError):
    """The file is not a bundle this program can read safely."""


class ZipMembers:
    """:class:`~linetap.sync.central.evidence_check.Members` of a bounded, checked zip. A context manager."""

    def __init__(self, path: Path) -> None:
        path = Path(path)
        try:
            mode = path.stat().st_mode
        except OSError as e:
            raise BundleUnusable(f"cannot read bundle {path}: {e.strerror}") from None
        if not stat.S_ISREG(mode):
            raise BundleUnusable(f"bundle {path} is not a regular file")
        try:
            self._zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError, ValueError) as e:
            raise BundleUnusable(f"{path} is not a zip file ({e})") from None
        try:
            self._infos = _checked(self._zip, path)
        except BaseException:
            self._zip.close()
            raise
        self._cache: dict[str, bytes | None] = {}

    def close(self) -> None:
        self._zip.close()

    def __enter__(self) -> ZipMembers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def names(self) -> list[str]:
        return sorted(self._infos)

    def read(self, name: str) -> bytes | None:
        if name not in self._cache:
            info = self._infos.get(name)
            self._cache[name] = None if info is None or info.file_size > ef.MAX_SMALL else self._read(info)
        return self._cache[name]

    def sha256(self, name: str) -> str:
        digest = hashlib.sha256()
        try:
            with self._zip.open(self._infos[name]) as member:
                while chunk := member.read(CHUNK):
                    digest.update(chunk)
        except (zipfile.BadZipFile, OSError, EOFError):
            return "unreadable"  # a damaged member matches no checksum
        return digest.hexdigest()

    def _read(self, info: zipfile.ZipInfo) -> bytes | None:
        try:
            with self._zip.open(info) as member:
                return member.read(ef.MAX_SMALL + 1)[:ef.MAX_SMALL]
        except (zipfile.BadZipFile, OSError, EOFError):
            return None


def _checked(archive: zipfile.ZipFile, path: Path) -> dict[str, zipfile.ZipInfo]:
    infos = archive.infolist()
    if len(infos) > ef.MAX_MEMBERS:
        raise BundleUnusable(f"{path} holds {len(infos)} entries; a bundle has at most {ef.MAX_MEMBERS}")
    found: dict[str, zipfile.ZipInfo] = {}
    total = 0
    for info in infos:
        name = info.filename
        if not ef.NAME.fullmatch(name) or ".." in name.split("/"):
            raise BundleUnusable(f"{path} holds an entry named {name[:120]!r}: a bundle's names are plain "
                                 "relative paths (no '/' at the start, no '..', no backslash)")
        if name in found:
            raise BundleUnusable(f"{path} holds {name} twice")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise BundleUnusable(f"{path}: {name} uses compression method {info.compress_type}")
        if info.file_size > ef.MAX_MEMBER:
            raise BundleUnusable(f"{path}: {name} declares {info.file_size} bytes; at most {ef.MAX_MEMBER}")
        total += info.file_size
        if total > ef.MAX_TOTAL:
            raise BundleUnusable(f"{path} declares more than {ef.MAX_TOTAL} bytes in all")
        found[name] = info
    return found
