"""What a spool file must look like: checks of age files and segments that need no key."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from linetap.firmware.schema import FileRefused, read_bounded

AGE_MAGIC = b"age-encryption.org/v1\n"
_AGE_CHUNK = 64 * 1024 + 16  # STREAM chunk: 64 KiB of plaintext and its tag
_AGE_NONCE = 16
_AGE_TAG = 16


def age_shape_problem(data: bytes) -> str | None:
    """Why ``data`` cannot be a whole age file, or None if its structure is plausible.

    Catches zero-length, garbage and most truncations without a key; a cut
    exactly at a chunk boundary passes and is caught by the sha256 in the
    catalogue or, for a file the catalogue never saw, by decryption centrally.
    """
    if not data:
        return "zero-length file"
    if not data.startswith(AGE_MAGIC):
        return f"not an age file (starts with {data[:8]!r})"
    mac = data.find(b"\n--- ")
    end = data.find(b"\n", mac + 1) if mac >= 0 else -1
    if end < 0:
        return "age header is truncated (no MAC line)"
    payload = len(data) - end - 1 - _AGE_NONCE
    if payload < _AGE_TAG:
        return f"age payload is truncated ({max(payload, 0)} bytes after the nonce)"
    last = payload % _AGE_CHUNK
    if 0 < last < _AGE_TAG or (last == _AGE_TAG and payload > _AGE_CHUNK):
        return f"age payload is truncated (last chunk {last} bytes)"
    return None


def kind_of(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISREG, "a file"), (stat.S_ISCHR, "a device"),
                       (stat.S_ISBLK, "a device"), (stat.S_ISFIFO, "a pipe"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a file"


def segment_problem(path: Path, size: int, sha256: str, data: bytes | None = None) -> str | None:
    """Why the segment at ``path`` (or its bytes ``data``) is not the one catalogued, or None."""
    if data is None:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return "file is missing"
        if not stat.S_ISREG(st.st_mode):
            return f"is {kind_of(st.st_mode)}, not a file"
        if st.st_size != size:  # judged before reading: a huge or endless file is never read
            return f"{st.st_size} bytes, expected {size} (truncated or replaced)"
        try:
            data = read_bounded(path, max_bytes=max(size, 0))
        except (FileRefused, OSError) as e:
            return f"cannot be read ({e})"
    if len(data) != size:
        return f"{len(data)} bytes, expected {size} (truncated or replaced)"
    if hashlib.sha256(data).hexdigest() != sha256:
        return "sha256 does not match (altered)"
    return age_shape_problem(data)
