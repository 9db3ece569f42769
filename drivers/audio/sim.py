"""The simulated codec: arrays, WAV files or sample sources, paced by an injected clock.

It ships with the package, as gpiozero's mock pins do, so that tests, replay
and the demo run the real call loop without a sound card.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

from linetap.drivers.audio.codec import (
    Block,
    CaptureRing,
    CodecStats,
    PlaybackQueue,
    check_layout,
    check_mono,
)
from linetap.drivers.audio.sources import SampleSource, as_source
from linetap.firmware.clock import Clock
from linetap.firmware.errors import DeviceError, DeviceLost, DeviceTimeout


class PlayRecord(NamedTuple):
    """One :meth:`SimCodec.play` call: when it was asked for and when it reaches the line."""

    stream_t: float  # stream time its first sample goes into the line
    clock_t: float  # clock.monotonic() at the call
    frames: int


class SimCodec:
    """A codec fed from arrays, WAV files or sample sources, paced by an injected clock.

    ``near`` and ``far`` are mono int16 arrays, paths of mono 16-bit WAV files
    at ``rate`` (other WAV formats raise ConfigError; convert them with sox),
    or :class:`SampleSource` objects (:class:`AudioFileSource` converts any
    WAV or Ogg). Sources are read a block at a time as the blocks fall due,
    never loaded whole, and closed with the codec. The shorter side is padded
    with silence, and so is the last block.
    Block k is due at start + (k + 1) * block_frames / rate on the clock:
    ``read()`` sleeps on the clock until then, so with SystemClock it runs in
    real time and with ManualClock as fast as the reader takes blocks.

    Like a duplex stream, each block captured also plays ``block_frames`` of
    the play queue (silence when empty); :attr:`played` is the line signal so
    far, sample i played at stream time i / rate, and :attr:`play_log` has one
    :class:`PlayRecord` per ``play()``. With ``keep_played=False`` the line
    signal is not kept (a long replay), only the log. :meth:`inject_overrun` and
    :meth:`lose_device` fake the device faults. No thread of its own: all the
    work happens in ``read()`` on the reader's thread.
    """

    def __init__(self, near: np.ndarray | str | os.PathLike | SampleSource,
                 far: np.ndarray | str | os.PathLike | SampleSource, *,
                 rate: int = 16000, block_frames: int = 320, clock: Clock, queue_blocks: int = 100,
                 keep_played: bool = True) -> None:
        check_layout(rate, block_frames, queue_blocks)
        self.rate = rate
        self.block_frames = block_frames
        self._clock = clock
        self._sources: list[SampleSource] = []
        try:
            for side, source in (("near", near), ("far", far)):
                self._sources.append(as_source(source, side, rate))
        except BaseException:
            self._close_sources()
            raise
        self._block = np.zeros((block_frames, 2), dtype=np.int16)  # the next block, once read
        self._block_ready = False
        self._ended = False
        # The line signal so far (grown by doubling), or None when not kept.
        self._played: np.ndarray | None = np.zeros(64 * block_frames, np.int16) if keep_played else None
        self._line = np.zeros(block_frames, dtype=np.int16)
        self._ring = CaptureRing(queue_blocks, block_frames, source="simulated codec")
        self._playback = PlaybackQueue()
        self._play_log: list[PlayRecord] = []
        self._start: float | None = None
        self._next = 0  # next block of the source to capture
        self._overruns = 0
        self._to_drop = 0
        self._lose_after: int | None = None
        self._closed = False

    def start(self) -> None:
        if self._start is not None:
            raise DeviceError("the simulated codec was already started; make a new one")
        self._start = self._clock.monotonic()

    def read(self, timeout: float | None = None) -> Block | None:
        if self._start is None:
            raise DeviceError("SimCodec.read() before start(); call start() first")
        if self._closed:
            return None
        if self._lose_after == 0:
            self._ring.fail(DeviceLost("simulated audio device lost (lose_device was called)"))
            return self._deliver(timeout=0)
        while self._to_drop and self._next_block():
            self._to_drop -= 1
            self._block_ready = False
            self._ring.skip()
            self._play_block()
        if not self._next_block():
            return None
        wait = self._start + (self._next + 1) * self.block_frames / self.rate - self._clock.monotonic()
        if timeout is not None and wait > timeout:
            self._clock.sleep(timeout)
            raise DeviceTimeout(f"no audio block from the simulated codec within {timeout} s "
                                f"(the next is due in {wait:.3f} s)")
        self._clock.sleep(wait)
        self._block_ready = False
        self._ring.push(self._block)
        self._play_block()
        if self._lose_after is not None:
            self._lose_after -= 1
        return self._deliver(timeout=0)

    def _next_block(self) -> bool:
        """Read the next block from the sources into ``_block``; False once both have ended."""
        if self._block_ready:
            return True
        if self._ended:
            return False
        got = 0
        for column, source in enumerate(self._sources):
            samples = source.read(self.block_frames)
            self._block[: len(samples), column] = samples
            self._block[len(samples):, column] = 0
            got = max(got, len(samples))
        self._ended = got == 0
        self._block_ready = not self._ended
        return self._block_ready

    def _play_block(self) -> None:
        if self._played is None:
            self._playback.read_into(self._line)
        else:
            start = self._next * self.block_frames
            if start + self.block_frames > len(self._played):
                self._played = np.concatenate([self._played, np.zeros_like(self._played)])
            self._playback.read_into(self._played[start:start + self.block_frames])
        self._next += 1

    def _deliver(self, timeout: float) -> Block | None:
        item = self._ring.pop(timeout)
        if item is None:
            return None
        seq, frames = item
        return Block(seq=seq, t=seq * self.block_frames / self.rate, frames=frames)

    def play(self, samples: np.ndarray) -> None:
        samples = check_mono(samples)
        stream_t = (self._next * self.block_frames + self._playback.pending()) / self.rate
        self._play_log.append(PlayRecord(stream_t, self._clock.monotonic(), len(samples)))
        self._playback.push(samples.copy())

    def play_pending(self) -> int:
        return self._playback.pending()

    def stop_playing(self) -> None:
        self._playback.clear()

    @property
    def played(self) -> np.ndarray:
        """Everything played into the line so far, mono int16 aligned with capture."""
        if self._played is None:
            raise DeviceError("this simulated codec does not keep the line signal (keep_played=False)")
        return self._played[: self._next * self.block_frames].copy()

    @property
    def play_log(self) -> list[PlayRecord]:
        return list(self._play_log)

    def inject_overrun(self, blocks: int = 1) -> None:
        """Lose the next ``blocks`` blocks as a device overrun would: a seq gap, counted."""
        self._overruns += 1
        self._to_drop += blocks

    def lose_device(self, after_blocks: int = 0) -> None:
        """Make ``read()`` raise DeviceLost once ``after_blocks`` more blocks were read."""
        self._lose_after = after_blocks

    def stats(self) -> CodecStats:
        return CodecStats(blocks=self._ring.pushed, overruns=self._overruns, underruns=0,
                          dropped_blocks=self._ring.dropped)

    def close(self) -> None:
        self._closed = True
        self._ring.close()
        self._close_sources()

    def _close_sources(self) -> None:
        for source in self._sources:
            source.close()
        self._sources = []

    def __enter__(self) -> SimCodec:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
