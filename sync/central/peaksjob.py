"""Making waveform peaks for stored recordings: decode, measure, keep in the index.

Where it runs, and why not in ingest. Peaks need the audio decoded (an hour
of Opus is seconds of CPU), and ingest answers a box while it waits: so
ingest does nothing for peaks, and cannot be slowed or failed by them.
``serve`` runs :class:`PeaksThread` beside its workers, which asks the index
for recordings stored since it last looked that have no peaks row yet
(:meth:`~linetap.sync.central.peakslog.PeaksTables.without_peaks`) and makes
theirs, one at a time. Nothing is queued in memory, so a restart loses
nothing: the first pass after a start covers every recording without peaks,
old ones included, and several hosts running ``serve`` at once only repeat
work (the row is written once). ``linetap-central peaks`` does one such pass
from the command line. A recording whose audio does not check or decode gets
a row saying why, and is not tried again (``--redo`` does).

The audio is decrypted and decoded in memory, one segment at a time (a
streaming reader under PyAV), so an hour-long call never sits in memory
whole, and plaintext never touches disk.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import av
import pyrage

from linetap.firmware.errors import LinetapError
from linetap.firmware.options import add_json
from linetap.sync.central.keys import load_identity
from linetap.sync.central.peaks import Peaks, PeaksBuilder, bucket_ms_for
from linetap.sync.central.stored import Stored

if TYPE_CHECKING:
    from linetap.sync.central.config import CentralConfig

logger = logging.getLogger(__name__)

DECODE_RATE = 48000  # Opus decodes at 48 kHz; peaks need no resampling
BATCH = 20


class _Plaintexts(io.RawIOBase):
    """A readable stream over decrypted segments, made one at a time as the decoder reads on."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        while not self._buffer:
            try:
                self._buffer = next(self._chunks)
            except StopIteration:
                return 0
        count = min(len(target), len(self._buffer))
        target[:count] = self._buffer[:count]
        self._buffer = self._buffer[count:]
        return count


def decrypted_segments(stored: Stored, row: dict[str, Any], manifest: dict[str, Any],
                       identity: pyrage.x25519.Identity, sizes: list[int]) -> Iterator[bytes]:
    """Each segment checked against the manifest and decrypted, in order; their sizes go to ``sizes``."""
    for entry in manifest["segments"]:
        plaintext = pyrage.decrypt(stored.checked_segment(row, entry), [identity])
        sizes.append(len(plaintext))
        yield plaintext


def compute_peaks(stored: Stored, device_id: str, recording_id: str,
                  identity: pyrage.x25519.Identity | None = None) -> Peaks:
    """The recording's peaks and segment sizes, from its checked, decrypted, decoded audio."""
    row = stored.recording(recording_id, device_id)
    manifest = stored.checked_manifest(row)
    audio = manifest.get("audio") if isinstance(manifest.get("audio"), dict) else {}
    rate = manifest.get("codec", {}).get("rate")
    frames = audio.get("frames")
    duration_ms = frames * 1000 // rate if isinstance(frames, int) and isinstance(rate, int) and rate > 0 \
        else row.get("duration_ms") or 0
    builder = PeaksBuilder(DECODE_RATE, bucket_ms_for(duration_ms))
    sizes: list[int] = []
    identity = identity or load_identity(stored.data_dir)
    reader = io.BufferedReader(_Plaintexts(decrypted_segments(stored, row, manifest, identity, sizes)))
    with av.open(reader, "r", format="ogg") as container:
        streams = container.streams.audio
        if len(streams) != 1 or streams[0].codec_context.name != "opus":
            raise LinetapError(f"recording {recording_id} holds streams "
                               f"{[s.codec_context.name for s in streams]}, not one Opus stream")
        resampler = av.AudioResampler(format="flt", layout="stereo", rate=DECODE_RATE)
        for frame in container.decode(streams[0]):
            for out in resampler.resample(frame):
                builder.add(out.to_ndarray().reshape(-1, 2))
        for out in resampler.resample(None):
            builder.add(out.to_ndarray().reshape(-1, 2))
    while reader.read(1 << 16):  # segments after the stream's end still count for the sizes
        pass
    return builder.finish(tuple(sizes))


def fill_peaks(stored: Stored, *, since_ms: int = 0, limit: int = BATCH,
               stop: threading.Event | None = None) -> tuple[int, int]:
    """Make peaks for up to ``limit`` recordings stored since ``since_ms`` without any.

    Returns (recordings done, the ``since_ms`` to ask from next). A recording
    whose audio fails gets a row with the reason (logged), never an exception.
    """
    identity = load_identity(stored.data_dir)
    done = 0
    for row in stored.index.without_peaks(limit, since_ms):
        if stop is not None and stop.is_set():
            break
        device, rid = row["device_id"], row["recording_id"]
        try:
            data, problem = compute_peaks(stored, device, rid, identity).to_bytes(), None
        except (LinetapError, av.FFmpegError, pyrage.DecryptError, ValueError, KeyError, TypeError) as e:
            data, problem = None, f"{type(e).__name__}: {e}"
            logger.warning("peaks not made device=%s recording=%s problem=%s", device, rid, problem)
        stored.index.add_peaks(device, rid, data, stored.now_ms(), problem=problem)
        since_ms = max(since_ms, row["stored_ms"])
        done += 1
    return done, since_ms


def fill_all(stored: Stored, stop: threading.Event | None = None) -> int:
    """Peaks for every recording without them; the number made."""
    total, since = 0, 0
    while True:
        done, since = fill_peaks(stored, since_ms=since, stop=stop)
        total += done
        if done < BATCH or (stop is not None and stop.is_set()):
            return total


class PeaksThread:
    """``serve``'s peaks step: a named thread that fills peaks every ``interval_s`` until closed."""

    def __init__(self, stored: Stored, *, interval_s: float = 5.0) -> None:
        self.stored = stored
        self.interval_s = interval_s
        self.made = 0
        self._made_changed = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="central-peaks", daemon=True)

    def start(self) -> PeaksThread:
        self._thread.start()
        return self

    def _run(self) -> None:
        since = 0
        while not self._stop.is_set():
            try:
                done, since = fill_peaks(self.stored, since_ms=since, stop=self._stop)
            except (LinetapError, OSError) as e:  # the index or store away for a while: try again later
                logger.warning("peaks step waiting: %s", e)
                done = 0
            with self._made_changed:
                self.made += done
                self._made_changed.notify_all()
            if done < BATCH:
                self._stop.wait(self.interval_s)

    def wait_made(self, count: int, timeout: float) -> bool:
        """True once peaks were made for at least ``count`` recordings since start (for tests, status)."""
        with self._made_changed:
            return self._made_changed.wait_for(lambda: self.made >= count, timeout)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def __enter__(self) -> PeaksThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def start_peaks(data_dir: Path, config: CentralConfig, *, interval_s: float = 5.0) -> Iterator[PeaksThread]:
    """For ``serve``: the peaks step on its own store and index connection, stopped on exit."""
    with Stored(data_dir, config=config) as stored, \
            PeaksThread(stored, interval_s=interval_s) as thread:
        yield thread


def add_peaks_command(sub: Any, common: argparse.ArgumentParser) -> None:
    """``linetap-central peaks``: plugged into :func:`linetap.sync.central.cli.build_parser`."""
    parser = sub.add_parser("peaks", parents=[common],
                            help="make the console's waveform peaks for every recording without them "
                                 "(serve does this on its own)")
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="central config with [index] and [store] (default: DATA_DIR/central.toml)")
    parser.add_argument("--redo", metavar="ID", action="append", default=[],
                        help="make this recording's peaks again (repeatable)")
    add_json(parser)
    parser.set_defaults(run=_peaks_command)


def _peaks_command(args: argparse.Namespace) -> int:
    from linetap.sync.central.cli import data_dir
    from linetap.sync.central.config import load_config
    folder = data_dir(args)
    with Stored(folder, config=load_config(args.config, folder)) as stored:
        for rid in args.redo:
            row = stored.recording(rid)
            stored.index.drop_peaks(row["device_id"], rid)
        made = fill_all(stored)
    print(json.dumps({"peaks_made": made}) if args.json else f"peaks made for {made} recordings")
    return 0
