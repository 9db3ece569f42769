"""The audio codec: capture both sides of the call, play prompts into the line.

One interface, :class:`Codec`, two implementations side by side:

- :class:`SoundDeviceCodec`, one duplex PortAudio stream (``sounddevice``) on
  the board's USB or I2S codec;
- :class:`SimCodec`, fed from arrays or WAV files and paced by an injected
  clock, which keeps everything it played into the line for tests.

Both hand captured audio to the reader through the same :class:`CaptureRing`,
so the simulated codec exercises the code path the audio callback uses.
Neither starts a thread of its own: the real codec's callback runs on
PortAudio's audio thread, the simulated one works inside ``read()``.

A block is ``block_frames`` frames of int16, column 0 the near end (agent),
column 1 the far end (caller), whatever capture channels the board wires them to.
"""

from __future__ import annotations

import logging
import os
import threading
import wave
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import NamedTuple, Protocol

import numpy as np

from linetap.drivers.resample import Decimator, Interpolator
from linetap.firmware.clock import Clock
from linetap.firmware.errors import ConfigError, DeviceError, DeviceLost, DeviceMissing, DeviceTimeout

logger = logging.getLogger(__name__)

PIPELINE_RATES = (8000, 16000, 48000)
# The rate codecs that refuse the pipeline rate are asked for next.
FALLBACK_DEVICE_RATE = 48000


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


def tone(freq: float, seconds: float, rate: int, level_db: float = -12.0) -> np.ndarray:
    """A sine as mono int16; ``level_db`` in dBFS, 0 dBFS being a full-scale sine (AES17)."""
    n = round(seconds * rate)
    amplitude = 32767 * 10 ** (level_db / 20)
    return np.rint(amplitude * np.sin(2 * np.pi * freq * np.arange(n) / rate)).astype(np.int16)


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


def _check_mono(samples: np.ndarray) -> np.ndarray:
    samples = np.asarray(samples)
    if samples.dtype != np.int16 or samples.ndim != 1:
        raise ValueError(f"play() takes mono int16 samples, got {samples.dtype} of shape {samples.shape}; "
                         f"convert with .astype(np.int16) (and mix down to one channel)")
    return samples


def _check_layout(rate: int, block_frames: int, queue_blocks: int) -> None:
    if rate not in PIPELINE_RATES:
        raise ConfigError(f"audio rate {rate} is not supported; use one of {PIPELINE_RATES}")
    if block_frames <= 0:
        raise ConfigError(f"block_frames must be positive, not {block_frames}; e.g. {rate // 50} for 20 ms")
    if queue_blocks < 2:
        raise ConfigError(f"queue_blocks must be 2 or more, not {queue_blocks}")


def choose_device_rate(rate: int, native_rate: int | None, accepts: Callable[[int], bool]) -> int:
    """The rate to open the device at, for a pipeline at ``rate``.

    ``native_rate`` if given, else ``rate`` if the device ``accepts`` it, else
    48 kHz. The device rate must be a whole multiple of the pipeline rate.
    """
    if native_rate is not None:
        if native_rate % rate:
            raise ConfigError(f"audio.native_rate {native_rate} is not a whole multiple of the pipeline "
                              f"rate {rate}; use {FALLBACK_DEVICE_RATE} or leave it unset")
        if not accepts(native_rate):
            raise DeviceError(f"the audio device refuses audio.native_rate {native_rate} Hz; "
                              f"set the rate it supports (often 48000) or leave it unset")
        return native_rate
    if accepts(rate):
        return rate
    if FALLBACK_DEVICE_RATE % rate == 0 and accepts(FALLBACK_DEVICE_RATE):
        return FALLBACK_DEVICE_RATE
    raise DeviceError(f"the audio device accepts neither {rate} Hz nor {FALLBACK_DEVICE_RATE} Hz; "
                      f"set audio.native_rate to a rate it supports that is a multiple of {rate}")


def _import_sounddevice() -> ModuleType:
    try:
        import sounddevice
    except OSError as error:
        raise DeviceError(f"the PortAudio library cannot be loaded ({error}); "
                          f"install it with `apt-get install libportaudio2`") from error
    return sounddevice


@dataclass(frozen=True)
class AudioDevice:
    """One audio device as PortAudio lists it (what a board profile's ``audio.device`` names)."""

    index: int
    name: str
    inputs: int
    outputs: int
    default_rate: float


def list_devices() -> list[AudioDevice]:
    """The audio devices of this machine; DeviceError when PortAudio itself cannot be loaded."""
    return [AudioDevice(d["index"], d["name"], d["max_input_channels"], d["max_output_channels"],
                        d["default_samplerate"]) for d in _import_sounddevice().query_devices()]


def _describe_devices(devices: Sequence[dict]) -> str:
    if not devices:
        return "no audio devices at all (is the codec plugged in, its overlay loaded, `aplay -l` empty?)"
    return "; ".join(f"{d['index']}: {d['name']!r} (in {d['max_input_channels']}, "
                     f"out {d['max_output_channels']}, {d['default_samplerate']:.0f} Hz)" for d in devices)


class SoundDeviceCodec:
    """The board's codec through one duplex PortAudio stream.

    ``device`` is a case-insensitive part of the device name as
    ``python -m sounddevice`` lists it; a missing device raises DeviceMissing
    listing the devices that exist. The stream opens at the pipeline ``rate``
    if the device takes it, else at 48 kHz (or ``native_rate`` when given), and
    ``read()``/``play()`` convert on the caller's thread.

    Callback contract: :meth:`_callback` runs on PortAudio's audio thread,
    once per block, and must finish well within a block (20 ms). It copies
    the near/far columns into the :class:`CaptureRing`, counts the device's
    overflow/underflow flags and copies queued prompt audio into the
    line-out channels (silence elsewhere). It allocates no arrays, does no I/O
    or logging, takes only the ring's and the playback queue's brief locks and
    never raises. Everything else (resampling, Block objects, logging) happens
    in ``read()`` and ``play()``.

    If the stream dies (device unplugged, driver error), PortAudio ends it;
    the blocks already captured are still delivered, then ``read()`` raises
    DeviceLost. ``read()`` returns None after :meth:`close`.
    """

    def __init__(self, device: str, *, rate: int, block_frames: int, channels: int = 2,
                 near: int = 0, far: int = 1, out_channels: int = 2,
                 line_out: tuple[int, ...] = (0, 1), queue_blocks: int = 100,
                 native_rate: int | None = None) -> None:
        _check_layout(rate, block_frames, queue_blocks)
        if near == far or not (0 <= near < channels and 0 <= far < channels):
            raise ConfigError(f"audio near={near}, far={far} must be two different capture channels "
                              f"in 0..{channels - 1}")
        if not line_out or any(not 0 <= c < out_channels for c in line_out):
            raise ConfigError(f"audio line_out={line_out} must list playback channels in 0..{out_channels - 1}")
        self._sd = _import_sounddevice()
        self.rate = rate
        self.block_frames = block_frames
        self._channels = channels
        self._out_channels = out_channels
        self._line_out = tuple(line_out)
        self._index, self.device_name = self._find(device)
        self.device_rate = choose_device_rate(rate, native_rate, self._accepts)
        factor = self.device_rate // rate
        self._decimator = Decimator(factor, channels=2) if factor > 1 else None
        self._interpolator = Interpolator(factor, channels=1) if factor > 1 else None
        self._device_block = block_frames * factor
        self._ring = CaptureRing(queue_blocks, self._device_block, columns=(near, far),
                                 source=f"audio device {self.device_name!r}")
        self._playback = PlaybackQueue()
        self._line = np.zeros(self._device_block, dtype=np.int16)
        self._play_lock = threading.Lock()
        self._overruns = 0
        self._underruns = 0
        self._stream = None
        self._closing = threading.Event()
        logger.info("audio device found name=%r index=%d rate=%d device_rate=%d block_frames=%d "
                    "channels=%d near=%d far=%d out_channels=%d line_out=%s", self.device_name,
                    self._index, rate, self.device_rate, block_frames, channels, near, far,
                    out_channels, ",".join(map(str, self._line_out)))

    def _find(self, wanted: str) -> tuple[int, str]:
        devices = list(self._sd.query_devices())
        matches = [d for d in devices if wanted.casefold() in d["name"].casefold()]
        if not matches:
            raise DeviceMissing(f"audio device {wanted!r} not found; devices here: "
                                f"{_describe_devices(devices)}. Set audio.device in the board "
                                f"profile to part of one of these names")
        for d in matches:
            if d["max_input_channels"] >= self._channels and d["max_output_channels"] >= self._out_channels:
                return d["index"], d["name"]
        raise DeviceError(f"audio device {wanted!r} has too few channels for audio.channels="
                          f"{self._channels}, audio.out_channels={self._out_channels}: "
                          f"{_describe_devices(matches)}; fix the board profile")

    def _accepts(self, samplerate: int) -> bool:
        try:
            self._sd.check_input_settings(self._index, channels=self._channels, dtype="int16",
                                          samplerate=samplerate)
            self._sd.check_output_settings(self._index, channels=self._out_channels, dtype="int16",
                                           samplerate=samplerate)
        except self._sd.PortAudioError:
            return False
        return True

    def start(self) -> None:
        if self._stream is not None or self._closing.is_set():
            raise DeviceError(f"audio device {self.device_name!r} was already started; make a new codec")
        try:
            self._stream = self._sd.Stream(
                device=(self._index, self._index), samplerate=self.device_rate,
                blocksize=self._device_block, dtype="int16",
                channels=(self._channels, self._out_channels),
                callback=self._callback, finished_callback=self._finished)
            self._stream.start()
        except self._sd.PortAudioError as error:
            raise DeviceError(f"cannot start audio device {self.device_name!r} at {self.device_rate} Hz: "
                              f"{error}; is another program using it (`fuser -v /dev/snd/*`)?") from error
        logger.info("audio stream started name=%r latency_in=%.3f latency_out=%.3f",
                    self.device_name, *self._stream.latency)

    def _callback(self, indata: np.ndarray, outdata: np.ndarray, frames: int, time_info: object,
                  status: object) -> None:
        if status:
            if status.input_overflow:
                self._overruns += 1
            if status.output_underflow:
                self._underruns += 1
        self._ring.push(indata)
        line = self._line[:frames]
        self._playback.read_into(line)
        outdata.fill(0)
        for channel in self._line_out:
            outdata[:, channel] = line

    def _finished(self) -> None:
        # PortAudio's thread, once the stream is inactive for any reason.
        if not self._closing.is_set():
            self._ring.fail(DeviceLost(
                f"audio device {self.device_name!r} stopped delivering audio (stream ended by PortAudio); "
                f"check its cable and `dmesg`, then restart the service"))

    def read(self, timeout: float | None = None) -> Block | None:
        try:
            item = self._ring.pop(timeout)
        except DeviceLost:
            logger.warning("audio device lost name=%r blocks=%d", self.device_name, self._ring.pushed)
            raise
        if item is None:
            return None
        seq, frames = item
        if self._decimator is not None:
            frames = self._decimator.process(frames)
        return Block(seq=seq, t=seq * self.block_frames / self.rate, frames=frames)

    def play(self, samples: np.ndarray) -> None:
        """Queue a sound; when resampling, it is converted here, tail included.

        Each call is converted as one whole sound: the filter rings out into
        ``2 * Interpolator.delay`` frames of silence after it (3 ms at 16 kHz),
        so the end of a prompt is never held back waiting for the next one.
        """
        samples = _check_mono(samples)
        if self._closing.is_set():
            raise DeviceError(f"audio device {self.device_name!r} is closed; cannot play")
        with self._play_lock:
            if self._interpolator is not None:
                samples = np.concatenate([self._interpolator.process(samples), self._interpolator.flush()])
            self._playback.push(samples)

    def play_pending(self) -> int:
        return -(-self._playback.pending() // (self.device_rate // self.rate))

    def stop_playing(self) -> None:
        self._playback.clear()

    def stats(self) -> CodecStats:
        return CodecStats(blocks=self._ring.pushed, overruns=self._overruns,
                          underruns=self._underruns, dropped_blocks=self._ring.dropped)

    def close(self) -> None:
        if self._closing.is_set():
            return
        self._closing.set()
        if self._stream is not None:
            self._stream.abort(ignore_errors=True)
            self._stream.close(ignore_errors=True)
        self._ring.close()
        stats = self.stats()
        logger.info("audio device closed name=%r blocks=%d overruns=%d underruns=%d dropped_blocks=%d",
                    self.device_name, stats.blocks, stats.overruns, stats.underruns, stats.dropped_blocks)

    def __enter__(self) -> SoundDeviceCodec:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class PlayRecord(NamedTuple):
    """One :meth:`SimCodec.play` call: when it was asked for and when it reaches the line."""

    stream_t: float  # stream time its first sample goes into the line
    clock_t: float  # clock.monotonic() at the call
    frames: int


class SampleSource(Protocol):
    """One side of the simulated line: mono int16 at the codec's rate, read in order.

    ``read(frames)`` returns up to ``frames`` samples, fewer only at the end,
    then empty arrays. A file is read as the codec asks for it, so a long call
    costs no more memory than a short one.
    """

    def read(self, frames: int) -> np.ndarray: ...

    def close(self) -> None: ...


class _ArraySource:
    """Samples already in memory, handed out as views."""

    def __init__(self, samples: np.ndarray, side: str) -> None:
        samples = np.asarray(samples)
        if samples.dtype != np.int16 or samples.ndim != 1:
            raise ConfigError(f"simulated codec {side}: expected mono int16 samples, got {samples.dtype} "
                              f"of shape {samples.shape}")
        self._samples, self._pos = samples, 0

    def read(self, frames: int) -> np.ndarray:
        chunk = self._samples[self._pos:self._pos + frames]
        self._pos += len(chunk)
        return chunk

    def close(self) -> None:
        pass


class WavSource:
    """A mono 16-bit WAV file at ``rate``, streamed; any other format is refused with the sox command."""

    def __init__(self, path: str | os.PathLike, side: str, rate: int) -> None:
        path = Path(path)
        try:
            self._wav = wave.open(str(path), "rb")
        except FileNotFoundError as error:
            raise ConfigError(f"simulated codec {side} file {path} does not exist") from error
        except (wave.Error, EOFError) as error:
            raise ConfigError(f"simulated codec {side} file {path} is not a readable WAV file: {error}") from error
        channels, width, file_rate = (self._wav.getnchannels(), self._wav.getsampwidth(),
                                      self._wav.getframerate())
        if (channels, width, file_rate) != (1, 2, rate):
            self._wav.close()
            raise ConfigError(
                f"simulated codec {side} file {path}: {file_rate} Hz, {channels} channel(s), "
                f"{8 * width}-bit; it needs mono 16-bit at {rate} Hz: convert it with "
                f"`sox {path} -r {rate} -c 1 -b 16 out.wav`")

    def read(self, frames: int) -> np.ndarray:
        return np.frombuffer(self._wav.readframes(frames), dtype="<i2").astype(np.int16)

    def close(self) -> None:
        self._wav.close()


class AudioFileSource:
    """A WAV or Ogg file at any rate, streamed as mono int16 at ``rate``.

    The file is decoded :attr:`CHUNK` frames at a time as the codec asks for
    samples: channels are mixed down and another rate is converted with
    soxr's streaming resampler, so memory stays flat in the file's length. A
    mono 16-bit PCM file at ``rate`` is passed through sample for sample.
    ``label`` names the file in the ConfigError an unreadable one raises.
    """

    CHUNK = 8192  # file frames per decode: half a second at 16 kHz

    def __init__(self, path: str | os.PathLike, rate: int, *, label: str = "audio file") -> None:
        import soundfile

        self.path = Path(path)
        self._what = f"{label} {self.path}"
        if not self.path.is_file():
            raise ConfigError(f"{self._what} does not exist (or is not a file)")
        self._errors = (soundfile.LibsndfileError, RuntimeError, TypeError)
        try:
            self._file = soundfile.SoundFile(self.path)
        except self._errors as exc:
            raise self._unreadable(exc) from None
        self.file_rate, self.channels = self._file.samplerate, self._file.channels
        self._exact = self.channels == 1 and self.file_rate == rate and self._file.subtype == "PCM_16"
        self._resampler = None
        if self.file_rate != rate:
            import soxr

            self._resampler = soxr.ResampleStream(self.file_rate, rate, 1, dtype="float32")
        self._pending = np.zeros(0, np.int16)
        self._eof = False

    def _unreadable(self, exc: BaseException) -> ConfigError:
        return ConfigError(f"{self._what} is not a readable WAV or Ogg file "
                           f"({str(exc).rsplit(': ', 1)[-1]}); "
                           f"convert it, e.g. with: sox IN.mp3 -r 16000 -c 1 OUT.wav")

    def read(self, frames: int) -> np.ndarray:
        while len(self._pending) < frames and not self._eof:
            self._pending = np.concatenate([self._pending, self._decode()])
        chunk, self._pending = self._pending[:frames], self._pending[frames:]
        return chunk

    def _decode(self) -> np.ndarray:
        try:
            if self._exact:
                samples = self._file.read(self.CHUNK, dtype="int16")
                self._eof = len(samples) < self.CHUNK
                return samples
            audio = self._file.read(self.CHUNK, dtype="float32", always_2d=True)
        except self._errors as exc:
            raise self._unreadable(exc) from None
        self._eof = len(audio) < self.CHUNK
        mono = audio.mean(axis=1, dtype=np.float32)
        if self._resampler is not None:
            mono = self._resampler.resample_chunk(mono, last=self._eof)
        return (np.clip(mono, -1, 1) * 32767).astype(np.int16)

    def close(self) -> None:
        self._file.close()


def _source(source: np.ndarray | str | os.PathLike | SampleSource, side: str, rate: int) -> SampleSource:
    if isinstance(source, (str, os.PathLike)):
        return WavSource(source, side, rate)
    if isinstance(source, np.ndarray):
        return _ArraySource(source, side)
    if callable(getattr(source, "read", None)):
        return source
    return _ArraySource(np.asarray(source), side)


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
        _check_layout(rate, block_frames, queue_blocks)
        self.rate = rate
        self.block_frames = block_frames
        self._clock = clock
        self._sources: list[SampleSource] = []
        try:
            for side, source in (("near", near), ("far", far)):
                self._sources.append(_source(source, side, rate))
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
        samples = _check_mono(samples)
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
