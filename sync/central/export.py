"""Export: one stored recording, checked and decrypted, written to a private file.

The file holds decrypted audio, so it is written complete or not at all,
mode 0600, and never through a symbolic link (:func:`write_private_file`).
``.ogg`` is the recorded Opus stream as the box encoded it; ``.wav`` is it
decoded to 16-bit stereo PCM.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import shutil
import tempfile
import wave
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pyrage

from linetap.firmware.durable import fsync_dir
from linetap.firmware.errors import AuthError, ConfigError, SyncError
from linetap.sync.central.index import UnknownRecording
from linetap.sync.central.keys import load_identity
from linetap.sync.central.stored import Stored

logger = logging.getLogger(__name__)

SUFFIXES = (".ogg", ".wav")


class ExportExists(ConfigError, FileExistsError):
    """The export file is already there (a file, a folder or a symbolic link) and ``--force`` was not given."""


@dataclass(frozen=True)
class Exported:
    path: Path
    segments: int
    frames: int | None  # decoded stereo frames (WAV only)
    rate: int


def export(stored: Stored, recording_id: str, out: Path, *, force: bool = False,
           device_id: str | None = None) -> Exported:
    """Check the recording's hashes and signature, decrypt and write it as ``.ogg`` or ``.wav``.

    The file is decrypted audio: it is created mode 0600, an existing file
    is replaced only with ``force``, and a symbolic link at ``out`` is
    never written through (with ``force`` the link itself is replaced).
    """
    out = Path(out)
    _check_target(out, force)
    audio, plaintexts, frames, rate = audio_of(stored, recording_id, out.suffix, device_id=device_id)
    write_private_file(out, audio, replace=force)
    logger.info("recording exported recording=%s segments=%d file=%s", recording_id, plaintexts, out)
    return Exported(out, plaintexts, frames, rate)


def audio_of(stored: Stored, recording_id: str, suffix: str, *,
             device_id: str | None = None) -> tuple[bytes, int, int | None, int]:
    """(the recording as ``.ogg`` or ``.wav`` bytes, its segments, WAV frames, rate), checked and decrypted
    in memory (the console's downloads; :func:`export` writes it to a file)."""
    row = stored.recording(recording_id, device_id)
    if row["erased_ms"] is not None:
        raise UnknownRecording(f"recording {recording_id} was erased ({row['erase_reason']}); "
                               "nothing is left to export")
    manifest = stored.checked_manifest(row)
    plaintexts = decrypted(stored, row, manifest)
    rate = manifest.get("codec", {}).get("rate")
    if suffix.lower() == ".ogg":
        return b"".join(plaintexts), len(plaintexts), None, rate
    audio, frames = _wav(plaintexts, rate)
    return audio, len(plaintexts), frames, rate


def _check_target(out: Path, force: bool) -> None:
    if out.suffix.lower() not in SUFFIXES:
        raise ConfigError(f"export file {out} must end in .ogg (the recorded Opus stream) or .wav (decoded)")
    if not out.parent.is_dir():
        raise ConfigError(f"export folder {out.parent} does not exist; create it or give -o a path "
                          "in an existing folder")
    if not force and os.path.lexists(out):
        raise _exists(out)


def decrypted(stored: Stored, row: dict[str, Any], manifest: dict[str, Any]) -> list[bytes]:
    """Each listed segment, checked against the manifest, decrypted with the central identity."""
    identity = load_identity(stored.data_dir)
    plaintexts = []
    for entry in manifest["segments"]:
        data = stored.checked_segment(row, entry)
        try:
            plaintexts.append(pyrage.decrypt(data, [identity]))
        except pyrage.DecryptError as e:
            raise AuthError(f"segment {entry['index']} of recording {row['recording_id']} does not decrypt "
                            f"with the central identity in {stored.data_dir}/keys ({e}); was the box given "
                            "another recipient?") from e
    if not plaintexts:
        raise SyncError(f"recording {row['recording_id']} has no audio (discarded={row['discarded']}, "
                        f"recorded={row['recorded']}): nothing to export")
    return plaintexts


def _wav(plaintexts: list[bytes], rate: int) -> tuple[bytes, int]:
    """(a WAV file's bytes, its stereo frames) of the decoded Opus segments."""
    from linetap.firmware.encoder import segments_to_pcm  # PyAV: only the WAV export needs it

    pcm = segments_to_pcm(plaintexts, rate)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm.tobytes())
    return buffer.getvalue(), len(pcm)


def write_private_file(out: Path, data: bytes, *, replace: bool) -> None:
    """Write ``out`` complete or not at all, mode 0600, never through a symbolic link (:func:`private_output`)."""
    with private_output(out, replace=replace) as file:
        file.write(data)


@contextmanager
def private_output(out: Path, *, replace: bool) -> Iterator[BinaryIO]:
    """A file to stream into; on a clean exit it becomes ``out``, complete, 0600, never through a link.

    The bytes go to a new temporary file in the same folder (``mkstemp``:
    exclusive, no link followed, 0600), which is then renamed over ``out``
    (``replace``: a link at ``out`` is itself replaced, its target untouched)
    or hard-linked to it, which fails if anything, even a dangling link, is
    there. On a file system without hard links (a FAT stick) the file is
    created with ``O_EXCL | O_NOFOLLOW`` instead. On an error nothing is left.
    """
    folder = out.parent
    fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=folder)
    tmp = Path(name)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w+b") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
            if replace:
                try:
                    os.replace(tmp, out)
                except IsADirectoryError:
                    raise ConfigError(f"export file {out} is a folder; give -o a file name") from None
            else:
                _link(tmp, out, file)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(folder)


def _link(tmp: Path, out: Path, file: BinaryIO) -> None:
    try:
        os.link(tmp, out, follow_symlinks=False)
    except FileExistsError:
        raise _exists(out) from None
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        _create_exclusive(out, file)


def _create_exclusive(out: Path, source: BinaryIO) -> None:
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise _exists(out) from None
    try:
        os.fchmod(fd, 0o600)
        source.seek(0)
        with os.fdopen(os.dup(fd), "wb") as target:
            shutil.copyfileobj(source, target, 1 << 20)
        os.fsync(fd)
    except OSError:
        os.close(fd)
        out.unlink(missing_ok=True)
        raise
    os.close(fd)


def _exists(out: Path) -> ExportExists:
    what = "a symbolic link" if out.is_symlink() else "a folder" if out.is_dir() else "a file"
    return ExportExists(f"export file {out} already exists ({what}); pass --force to replace it "
                        "(a link is replaced, never written through), or choose another name")
