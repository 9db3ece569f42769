"""Waveform peaks and markers of a recording, sans-IO: two lanes (agent, caller) of min/max per bucket.

The console draws a call's waveform from peaks computed once, after the
recording is stored (``peaksjob.py`` decodes it in ``serve``'s background
step), never from the audio at page load. A bucket is 50 ms, or longer for
a call so long that 50 ms would give more than :data:`MAX_BUCKETS` (a
screen is a few thousand pixels wide); each holds the lowest and highest
sample of each channel, scaled to -127..127 so a lane is one byte per value.

Markers come from the signed manifest alone: the announcement, warning
tones, pauses, mutes, masked DTMF, flags, opt-out and private calls, each
at its time on the audio's axis (events are on the call's axis, which the
kept audio starts ``audio.start_ms`` into).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from linetap.firmware.errors import SyncError

BUCKET_MS = 50
MAX_BUCKETS = 8000  # per lane: 6 min 40 s at 50 ms; longer calls get wider buckets
LANES = ("agent", "caller")  # column 0 is the near end (the agent), column 1 the far end (the caller)
FORMAT = b"LTPK1"
HEADER = struct.Struct(">5sIIQ")  # magic, bucket_ms, rate, buckets
MAX_SEGMENTS = 1_000_000
POINT_KINDS = {"announcement-start": "announcement", "warning-tone": "tone", "flag": "flag",
               "opt-out": "opt-out", "private": "private"}
SPAN_KINDS = (("pauses", "pause"), ("mutes", "mute"), ("masks", "masked-dtmf"))


class PeaksError(SyncError, ValueError):
    """Stored peaks that do not parse (truncated, another format)."""


def bucket_ms_for(duration_ms: int) -> int:
    """50 ms, or the smallest multiple of it that keeps a call of ``duration_ms`` within MAX_BUCKETS."""
    span = BUCKET_MS * MAX_BUCKETS
    return BUCKET_MS * max(1, -(-max(0, duration_ms) // span))


@dataclass(frozen=True)
class Peaks:
    """``low``/``high``: (buckets, 2) int8, columns as :data:`LANES`; ``sizes``: each segment's plaintext bytes."""

    bucket_ms: int
    rate: int
    low: np.ndarray
    high: np.ndarray
    sizes: tuple[int, ...] = ()

    def to_bytes(self) -> bytes:
        """The stored form: a header, the segment sizes, then low and high as raw bytes."""
        head = HEADER.pack(FORMAT, self.bucket_ms, self.rate, len(self.low))
        sizes = struct.pack(f">I{len(self.sizes)}Q", len(self.sizes), *self.sizes)
        return head + sizes + self.low.astype(np.int8).tobytes() + self.high.astype(np.int8).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> Peaks:
        if len(data) < HEADER.size + 4 or data[:5] != FORMAT:
            raise PeaksError("stored peaks are not in the LTPK1 format; run `linetap-central peaks --redo`")
        _, bucket_ms, rate, buckets = HEADER.unpack_from(data)
        (count,) = struct.unpack_from(">I", data, HEADER.size)
        start = HEADER.size + 4 + 8 * count
        if count > MAX_SEGMENTS or bucket_ms == 0 or len(data) != start + 4 * buckets:
            raise PeaksError(f"stored peaks are {len(data)} bytes, not what their header says "
                             f"({buckets} buckets, {count} segments); run `linetap-central peaks --redo`")
        sizes = struct.unpack_from(f">{count}Q", data, HEADER.size + 4)
        lanes = np.frombuffer(data, dtype=np.int8, offset=start).reshape(2, buckets, 2)
        return cls(bucket_ms, rate, lanes[0], lanes[1], tuple(sizes))

    def as_json(self) -> dict[str, Any]:
        return {"bucket_ms": self.bucket_ms, "buckets": len(self.low),
                "lanes": [{"name": name, "min": self.low[:, i].tolist(), "max": self.high[:, i].tolist()}
                          for i, name in enumerate(LANES)]}


class PeaksBuilder:
    """Feed decoded stereo audio in order (:meth:`add`), then :meth:`finish`. No I/O."""

    def __init__(self, rate: int, bucket_ms: int) -> None:
        if rate <= 0 or bucket_ms <= 0 or rate * bucket_ms % 1000:
            raise ValueError(f"rate {rate} Hz and bucket {bucket_ms} ms give no whole samples per bucket")
        self.rate = rate
        self.bucket_ms = bucket_ms
        self.per_bucket = rate * bucket_ms // 1000
        self._low: list[np.ndarray] = []
        self._high: list[np.ndarray] = []
        self._pending: list[np.ndarray] = []
        self._count = 0
        self._batch = max(self.per_bucket, rate * 10)  # reduce ~10 s at a time, not a decoder frame

    def add(self, frames: np.ndarray) -> None:
        """(n, 2) samples: float in [-1, 1] or int16."""
        if frames.ndim != 2 or frames.shape[1] != 2:
            raise ValueError(f"peaks take stereo (n, 2) frames, got shape {frames.shape}")
        block = frames.astype(np.float32) / 32768.0 if frames.dtype == np.int16 else frames.astype(np.float32)
        self._pending.append(block)
        self._count += len(block)
        if self._count >= self._batch:
            self._reduce(final=False)

    def _reduce(self, *, final: bool) -> None:
        data = np.concatenate(self._pending) if self._pending else np.zeros((0, 2), dtype=np.float32)
        whole = len(data) if final else len(data) // self.per_bucket * self.per_bucket
        lanes = np.ascontiguousarray(data[:whole].T)  # (2, n): each lane's samples side by side
        full = whole // self.per_bucket * self.per_bucket
        if full:
            shaped = lanes[:, :full].reshape(2, -1, self.per_bucket)
            self._low.append(shaped.min(axis=2).T)
            self._high.append(shaped.max(axis=2).T)
        if whole > full:  # the call's last, shorter bucket
            self._low.append(lanes[:, full:].min(axis=1, keepdims=True).T)
            self._high.append(lanes[:, full:].max(axis=1, keepdims=True).T)
        rest = data[whole:]
        self._pending = [rest] if len(rest) else []
        self._count = len(rest)

    def finish(self, sizes: tuple[int, ...] = ()) -> Peaks:
        self._reduce(final=True)
        low = np.concatenate(self._low) if self._low else np.zeros((0, 2), dtype=np.float32)
        high = np.concatenate(self._high) if self._high else np.zeros((0, 2), dtype=np.float32)
        return Peaks(self.bucket_ms, self.rate, _scale(low), _scale(high), tuple(sizes))


def _scale(values: np.ndarray) -> np.ndarray:
    return np.clip(np.round(values * 127), -127, 127).astype(np.int8)


def markers(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The call's markers on the audio's time axis (ms from its first sample), in time order.

    Each is ``{"kind", "at_ms", "end_ms"}`` (``end_ms`` None for a point, or
    a span the call ended inside). The manifest is the signed one, checked
    by the caller; values of the wrong type are skipped, never trusted.
    """
    audio = manifest.get("audio") if isinstance(manifest.get("audio"), dict) else {}
    origin = audio.get("start_ms") if isinstance(audio.get("start_ms"), int) else 0
    out = []
    events = manifest.get("events") if isinstance(manifest.get("events"), list) else []
    for event in events:
        if isinstance(event, dict) and event.get("kind") in POINT_KINDS and _is_int(event.get("t_ms")):
            out.append({"kind": POINT_KINDS[event["kind"]], "at_ms": max(0, event["t_ms"] - origin),
                        "end_ms": _announcement_end(events, event, origin)})
    for member, kind in SPAN_KINDS:
        spans = manifest.get(member) if isinstance(manifest.get(member), list) else []
        for span in spans:
            if isinstance(span, list) and len(span) == 2 and _is_int(span[0]):
                end = span[1] - origin if _is_int(span[1]) else None
                out.append({"kind": kind, "at_ms": max(0, span[0] - origin), "end_ms": end})
    return sorted(out, key=lambda m: (m["at_ms"], m["kind"]))


def _announcement_end(events: list[Any], event: dict[str, Any], origin: int) -> int | None:
    if event["kind"] != "announcement-start":
        return None
    for later in events:
        if isinstance(later, dict) and later.get("kind") == "announcement-end" and _is_int(later.get("t_ms")) \
                and later["t_ms"] >= event["t_ms"]:
            return later["t_ms"] - origin
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
