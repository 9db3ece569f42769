"""The real codec: the board's USB or I2S codec through one duplex PortAudio stream.

``sounddevice`` (and with it PortAudio) is loaded only when a real codec is
built or the devices are listed, so importing the drivers never needs
libportaudio2, and a machine without it gets an error naming the package.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from linetap.drivers.audio.codec import (
    Block,
    CaptureRing,
    CodecStats,
    PlaybackQueue,
    check_layout,
    check_mono,
)
from linetap.drivers.resample import Decimator, Interpolator
from linetap.firmware.errors import ConfigError, DeviceError, DeviceLost, DeviceMissing

logger = logging.getLogger(__name__)

# The rate codecs that refuse the pipeline rate are asked for next.
FALLBACK_DEVICE_RATE = 48000


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
        check_layout(rate, block_frames, queue_blocks)
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
        samples = check_mono(samples)
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
