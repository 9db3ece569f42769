"""Files that are complete or absent: the one way the box and the centre write what must survive.

Temporary name, every byte written, fsync, rename over the target, fsync the
folder (the rename itself is only durable once the folder is). A power cut
leaves the old file or the new one, never a mix, and at worst a temporary
file that the owner's recovery removes by its name. Standard library only,
so every layer may use it.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make renames, creations and deletions in folder ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """Write every byte (os.write may write fewer) and fsync."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.fsync(fd)


def write_new_private(path: Path, data: bytes) -> None:
    """Create ``path`` (mode 0600 from the first byte; never replaces a file) and fsync it.

    The caller fsyncs the folder once it has made everything it makes.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        write_all(fd, data)
    finally:
        os.close(fd)


class DurableFiles:
    """Whole-file writes, a constructor argument of their users so tests can fail them as a full disk does.

    The temporary file is ``<prefix><name><suffix>`` next to the target;
    ``unique_temp`` puts the process and thread in the name so that writers
    racing on one path (the centre's workers) never write into each other's
    file.
    """

    def __init__(self, *, temp_prefix: str = ".", temp_suffix: str = ".tmp", unique_temp: bool = False,
                 mode: int = 0o600) -> None:
        self.temp_prefix = temp_prefix
        self.temp_suffix = temp_suffix
        self.unique_temp = unique_temp
        self.mode = mode

    def temp_path(self, path: Path) -> Path:
        tag = f"{os.getpid()}-{threading.get_ident()}-" if self.unique_temp else ""
        return path.with_name(f"{self.temp_prefix}{tag}{path.name}{self.temp_suffix}")

    def write(self, path: Path, data: bytes) -> None:
        tmp = self.temp_path(path)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, self.mode)
            try:
                os.fchmod(fd, self.mode)
                write_all(fd, data)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
        self.sync_dir(path.parent)

    def sync_dir(self, path: Path) -> None:
        fsync_dir(path)


def write_durably(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """:meth:`DurableFiles.write` for one file, making its folder first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    DurableFiles(mode=mode).write(path, data)


def remove_durably(path: Path) -> None:
    """Delete ``path`` if it is there, durably."""
    if path.exists():
        path.unlink()
        fsync_dir(path.parent)
