"""What every audio codec offers, and the hand-over both implementations share.

:class:`Codec` is the interface the recorder and the consent player use. A
:class:`Block` is ``block_frames`` frames of int16, column 0 the near end
(agent), column 1 the far end (caller), whatever capture channels the board
wires them to. Both codecs hand captured audio to the reader through one
:class:`CaptureRing` and take prompt audio from one :class:`PlaybackQueue`,
so the simulated codec exercises the code path the audio callback uses.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from linetap.firmware.errors import ConfigError, DeviceError, DeviceTimeout

PIPELINE_RATES = (8000, 16000, 48000)


@dataclass(frozen=True)
class Block:
    """One block of captured audio."""

    seq: int  # block number since start; a gap means blocks were dropped
    t: float  # stream time of the first frame, seconds since start (frames / rate)
    frames: np.ndarray  # (block_frames, 2) int16; column 0 near end (agent), 1 far end (caller)


@dataclass(frozen=True)
class CodecStats:
    """Counters since start, for telemetry.

    ``overruns``: times the device reported lost input. ``underruns``: times
    playback ran dry inside the device. ``dropped_blocks``: blocks that never
    reached the reader (ring full because the reader fell behind, or lost by
    the device where it says how many).
    """

    blocks: int
    overruns: int
    underruns: int
    dropped_blocks: int


class Codec(Protocol):
    """What the recorder and the consent player need from an audio codec."""

    rate: int  # pipeline sample rate: 8000, 16000 or 48000
    block_frames: int  # frames per block at the pipeline rate

    def start(self) -> None:
        """Start capturing (and playing what :meth:`play` queues)."""

    def read(self, timeout: float | None = None) -> Block | None:
        """The next captured block; None once the source is exhausted or the codec closed.

        Raises DeviceLost when the device went away (after the blocks captured
        before that were read), DeviceTimeout when nothing came within ``timeout``.
        """

    def play(self, samples: np.ndarray) -> None:
        """Queue mono int16 at ``rate`` after what is queued, for the line-out channels; never blocks."""

    def play_pending(self) -> int:
        """Frames (at ``rate``) queued but not yet played."""

    def stop_playing(self) -> None:
        """Drop whatever is queued for the line (a prompt cut short); never blocks."""

    def stats(self) -> CodecStats:
        """Counters since start."""

    def close(self) -> None:
        """Stop and release the device; safe to call twice."""


class CaptureRing:
    """Preallocated blocks between an audio callback (one producer) and one reader.

    :meth:`push` is what the audio callback calls: it copies one block into a
    free slot, picking the ``columns`` of ``indata`` in order (near, far), with
    no allocation, no I/O and only a brief lock to publish the slot. When every
    slot is taken the new block is dropped and counted; its sequence number is
    still used up, so the reader sees the gap. :meth:`pop` waits on a condition.
    """

    def __init__(self, slots: int, frames: int, *, columns: Sequence[int] = (0, 1),
                 source: str = "audio device") -> None:
        if slots < 2:
            raise ConfigError(f"a capture ring needs 2 or more blocks, not {slots}; raise queue_blocks")
        self._source = source
        self._column_pairs = tuple(enumerate(columns))  # (slot column, input column)
        # The common wiring copies the whole input in one go, several times faster than by column.
        self._in_order = tuple(columns) == tuple(range(len(columns)))
        storage = np.zeros((slots, frames, len(columns)), dtype=np.int16)
        self._slots = list(storage)  # views made once, so push() creates none
        self._capacity = slots
        self._seqs = [0] * slots
        self._cond = threading.Condition(threading.Lock())
        self._head = 0  # oldest unread slot; moved by the reader
        self._count = 0  # filled slots; the producer only raises it, the reader only lowers it
        self._tail = 0  # next slot to fill; producer only
        self._next_seq = 0
        self._dropped = 0
        self._reader_waiting = False
        self._failure: DeviceError | None = None
        self._closed = False

    @property
    def pushed(self) -> int:
        """Blocks that made it into the ring."""
        return self._next_seq - self._dropped

    @property
    def dropped(self) -> int:
        """Blocks lost before the reader could have them."""
        return self._dropped

    def push(self, indata: np.ndarray) -> bool:
        """Store one block from the audio thread; False if it was dropped because the ring is full."""
        seq = self._next_seq
        self._next_seq = seq + 1
        # Only the reader changes _count meanwhile, and only downwards: a stale
        # value can make us drop one block too many, never overwrite an unread one.
        if self._count == self._capacity:
            self._dropped += 1
            return False
        index = self._tail
        slot = self._slots[index]
        if self._in_order and indata.shape[1] == slot.shape[1]:
            np.copyto(slot, indata)
        else:
            for slot_column, input_column in self._column_pairs:
                slot[:, slot_column] = indata[:, input_column]
        self._seqs[index] = seq
        self._tail = (index + 1) % self._capacity
        with self._cond:
            self._count += 1
            if self._reader_waiting:
                self._cond.notify()
        return True

    def skip(self, blocks: int = 1) -> None:
        """Account for blocks the device lost: they use up sequence numbers and count as dropped."""
        self._next_seq += blocks
        self._dropped += blocks

    def pop(self, timeout: float | None = None) -> tuple[int, np.ndarray] | None:
        """The oldest block as (seq, frames copy); None once closed.

        Raises the failure given to :meth:`fail` once the blocks before it are
        read, DeviceTimeout when nothing arrives within ``timeout`` seconds.
        """
        with self._cond:
            if not (self._count or self._closed or self._failure is not None):
                self._reader_waiting = True
                self._cond.wait(timeout)
                self._reader_waiting = False
                if not (self._count or self._closed or self._failure is not None):
                    raise DeviceTimeout(f"no audio block from {self._source} within {timeout} s; "
                                        f"check that the stream is running and the device is not stalled")
            if self._closed:
                return None
            if not self._count:
                raise type(self._failure)(*self._failure.args)
            index = self._head
            # Copying here holds the producer off for about a microsecond at most.
            frames = self._slots[index].copy()
            self._head = (index + 1) % self._capacity
            self._count -= 1
            return self._seqs[index], frames

    def fail(self, error: DeviceError) -> None:
        """Make the reader get ``error`` after the blocks already stored."""
        with self._cond:
            self._failure = error
            self._cond.notify_all()

    def close(self) -> None:
        """Wake the reader with None from now on."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class PlaybackQueue:
    """Mono int16 waiting to be played, drained a block at a time by the audio callback."""

    def __init__(self) -> None:
        self._chunks: deque[np.ndarray] = deque()
        self._offset = 0  # samples of _chunks[0] already played
        self._pending = 0
        self._lock = threading.Lock()

    def push(self, samples: np.ndarray) -> None:
        with self._lock:
            self._chunks.append(samples)
            self._pending += len(samples)

    def pending(self) -> int:
        return self._pending

    def clear(self) -> None:
        with self._lock:
            self._chunks.clear()
            self._offset = 0
            self._pending = 0

    def read_into(self, out: np.ndarray) -> int:
        """Fill ``out`` with queued samples, silence after them; returns how many were queued samples.

        Safe on the audio thread: copies into ``out``, allocates no arrays.
        """
        filled = 0
        with self._lock:
            while filled < len(out) and self._chunks:
                chunk = self._chunks[0]
                take = min(len(chunk) - self._offset, len(out) - filled)
                out[filled:filled + take] = chunk[self._offset:self._offset + take]
                filled += take
                self._offset += take
                if self._offset == len(chunk):
                    self._chunks.popleft()
                    self._offset = 0
            self._pending -= filled
        out[filled:] = 0
        return filled


def check_mono(samples: np.ndarray) -> np.ndarray:
    samples = np.asarray(samples)
    if samples.dtype != np.int16 or samples.ndim != 1:
        raise ValueError(f"play() takes mono int16 samples, got {samples.dtype} of shape {samples.shape}; "
                         f"convert with .astype(np.int16) (and mix down to one channel)")
    return samples


def check_layout(rate: int, block_frames: int, queue_blocks: int) -> None:
    if rate not in PIPELINE_RATES:
        raise ConfigError(f"audio rate {rate} is not supported; use one of {PIPELINE_RATES}")
    if block_frames <= 0:
        raise ConfigError(f"block_frames must be positive, not {block_frames}; e.g. {rate // 50} for 20 ms")
    if queue_blocks < 2:
        raise ConfigError(f"queue_blocks must be 2 or more, not {queue_blocks}")
