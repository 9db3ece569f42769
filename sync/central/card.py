"""Reading a box's data dir brought in by hand (an SD card) without trusting anything on it.

``linetap-central import`` runs with the rights of the store's operator,
which can read the central identity; the card was written by a box that may
be broken or in hostile hands. So nothing on the card is followed or read
whole:

- every folder and file is opened relative to its parent's descriptor with
  ``O_NOFOLLOW``: a symbolic link (to ``keys/central.key``, say) is refused
  and named, never read; a swap of a folder for a link after it was checked
  changes nothing, since the descriptor stays on what was checked;
- only regular files are read (a FIFO or device is refused; ``O_NONBLOCK``
  keeps the open from waiting on one), and at most ``limit + 1`` bytes of
  them, with the size the file claims checked first, so a 130 MB file costs
  nothing before it is refused.

The layout names (``spool/``, ``manifest.json``, ``NNNNNN.age``) are the
spool's (:mod:`linetap.firmware.spool.layout`); this module only reads them.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from linetap.firmware.errors import SyncError
from linetap.firmware.spool.layout import MANIFEST_FILE, SPOOL_DIR, segment_name

__all__ = ["CardRefused", "MANIFEST_FILE", "SPOOL_DIR", "open_folder", "read_file", "segment_file"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CHUNK = 1 << 20


class CardRefused(SyncError):
    """A file or folder on the card is not what the spool writes; ``code`` is the ingest rejection code."""

    def __init__(self, message: str, code: str = "malformed") -> None:
        super().__init__(message)
        self.code = code


def segment_file(index: int) -> str:
    return segment_name(index)


def open_folder(path: Path, *, dir_fd: int | None = None) -> int:
    """A descriptor of folder ``path`` (a name in ``dir_fd`` when given); never through a link.

    Raises :class:`CardRefused` naming ``path`` when it is a symbolic link or
    not a folder, FileNotFoundError when it is not there.
    """
    name = path.name if dir_fd is not None else str(path)
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        raise
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise CardRefused(_not_followed(path, name, dir_fd, "a folder")) from None
        raise CardRefused(f"{path} cannot be opened ({e.strerror})", "store-unavailable") from None


def read_file(dir_fd: int, path: Path, limit: int, *, code: str = "too-large") -> bytes:
    """The bytes of regular file ``path.name`` in ``dir_fd``, refused past ``limit`` bytes with ``code``.

    FileNotFoundError when it is not there; :class:`CardRefused` naming
    ``path`` when it is a link, not a regular file, or larger than ``limit``.
    """
    try:
        fd = os.open(path.name, _FILE_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        raise
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise CardRefused(_not_followed(path, path.name, dir_fd, "a file")) from None
        raise CardRefused(f"{path} cannot be read ({e.strerror})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise CardRefused(f"{path} is not a regular file; the box writes only regular files there")
        if info.st_size > limit:
            raise CardRefused(f"{path} is {info.st_size} bytes; at most {limit} are accepted", code)
        chunks, total = [], 0
        while total <= limit:
            chunk = os.read(fd, min(_CHUNK, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:  # it grew after the fstat
            raise CardRefused(f"{path} is more than {limit} bytes; at most {limit} are accepted", code)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _not_followed(path: Path, name: str, dir_fd: int | None, kind: str) -> str:
    try:
        is_link = stat.S_ISLNK(os.lstat(name, dir_fd=dir_fd).st_mode)
    except OSError:
        is_link = False
    if is_link:
        return (f"{path} is a symbolic link; import never follows links out of a box's data dir (the box "
                f"writes none): copy the card's real files instead")
    return f"{path} is not {kind} as the box's spool has it"
