"""The USB handset bridge as the box's codec: two duplex PortAudio streams around :class:`BridgeCore`.

One stream on the headset (mic in, speaker out, the headset's clock), one on
the USB gadget the PC sees (what the PC plays in, what it receives out, the
PC's clock): the four ALSA endpoints. To the rest of the box this is a
:class:`~linetap.drivers.audio.Codec` like any other: blocks of near/far at
the recording rate, ``play()`` for the consent audio (into the call, so the
PC hears it, and to the agent).

Callback contract (as :class:`~linetap.drivers.audio.SoundDeviceCodec`'s):
each callback runs on PortAudio's audio thread once per device period. It
copies the FIFO's next block out (:meth:`BridgeCore.pull_speaker` /
:meth:`BridgeCore.pull_uplink`: copies only), copies its input into a
:class:`~linetap.drivers.audio.CaptureRing` and wakes the pump; no
allocation of arrays, no I/O, no logging, never raises. The pump is
:meth:`UsbBridgeCodec.read`, on the service's audio reader thread, which
calls it without pause: it resamples, mixes, taps and hands out blocks.

Rates: the gadget's stream opens at ``gadget_rate`` if the gadget's card
takes it, else at the other rate it offers. With several rates in configfs
(``c_srate``/``p_srate`` lists) the kernel lets the box's side open only the
rate the PC chose, so that is the PC's choice. When the gadget's stream ends
(the PC unplugged, suspended, or switched rates) it is reopened at the rate
the card takes then, and the bridge's two directions start again at it; the
taps carry on. A PC that picks different rates for its two directions, or
switches without the stream ending, is not followed: the image should offer
48 kHz alone, which every softphone opens (the OS mixes to it).

Faults: the headset's stream ending (unplugged) is the analog codec's
device loss: the blocks captured before it are delivered, then ``read()``
raises DeviceLost; the call closes with what was recorded and the service
restarts, finding the headset again once it is back. The PC going away
(unplugged, suspended) only silences the far side: the gadget's stream is
reopened with the project's back-off while the headset side keeps recording.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import numpy as np

from linetap.drivers.audio.codec import Block, CaptureRing, CodecStats, check_layout, check_mono
from linetap.drivers.audio.device import _describe_devices, _import_sounddevice
from linetap.drivers.usbbridge.core import GADGET_RATES, HEADSET_RATES, BridgeCore, BridgeSettings, BridgeStats
from linetap.firmware.backoff import Backoff
from linetap.firmware.clock import Clock
from linetap.firmware.errors import ConfigError, DeviceError, DeviceLost, DeviceMissing, DeviceTimeout

logger = logging.getLogger(__name__)

GADGET_REOPEN = Backoff(initial=1.0, maximum=10.0, jitter=0.2)
PUMP_TURN = 4  # device periods of one side the pump takes before the other side's turn


def find_device(sd: ModuleType, wanted: str, role: str) -> dict[str, Any]:
    """The PortAudio device whose name contains ``wanted`` and that both captures and plays."""
    devices = list(sd.query_devices())
    for device in devices:
        if wanted.casefold() in device["name"].casefold() and device["max_input_channels"] >= 1 \
                and device["max_output_channels"] >= 1:
            return device
    raise DeviceMissing(f"{role} audio device {wanted!r} not found (or it does not both capture and play); "
                        f"devices here: {_describe_devices(devices)}. Check the cable and `aplay -l`, "
                        f"then the board profile's device name")


def choose_gadget_rate(accepts: Any, preferred: int) -> int:
    """The gadget's rate: ``preferred`` if its card takes it now, else another it offers.

    With several rates in configfs the kernel lets the gadget's side open only the rate the PC
    chose, so what the card accepts is the PC's choice.
    """
    for rate in (preferred, *GADGET_RATES):
        if accepts(rate):
            return rate
    raise DeviceError(f"the USB gadget's sound card takes none of the rates {GADGET_RATES} Hz; check the "
                      f"image's configfs (c_srate, p_srate) and `linetap doctor`'s gadget check")


def choose_headset_rate(accepts: Any, preferred: int) -> int:
    """The headset's rate: ``preferred`` (the gadget's) if it takes it, else the highest it takes."""
    for rate in (preferred, *sorted(HEADSET_RATES, reverse=True)):
        if accepts(rate):
            return rate
    raise DeviceError(f"the headset accepts none of the rates {HEADSET_RATES} Hz; it cannot be bridged")


class _Side:
    """One device's duplex stream: its ring of captured blocks and its callback's scratch arrays."""

    def __init__(self, name: str, device: dict[str, Any], rate: int, block: int, queue_blocks: int) -> None:
        self.name, self.device, self.rate, self.block = name, device, rate, block
        self.inputs = min(2, device["max_input_channels"])
        self.outputs = min(2, device["max_output_channels"])
        self.ring = CaptureRing(queue_blocks, block, columns=(0, 1), source=f"{name} {device['name']!r}")
        self.pair = np.zeros((block, 2), dtype=np.int16)  # what the callback hands the pump
        self.mono_in = np.zeros(block, dtype=np.int32)
        self.mono_out = np.zeros(block, dtype=np.int16)
        self.stream: Any = None
        self.failed = False
        self.xruns = 0  # overflow/underflow flags PortAudio reported for this device

    def count(self, status: Any) -> None:
        self.xruns += int(bool(status.input_overflow)) + int(bool(status.output_underflow))

    def mix_down(self, indata: np.ndarray) -> None:
        """The input's channels averaged into ``pair[:, 0]`` (no allocation)."""
        np.add.reduce(indata, axis=1, dtype=np.int32, out=self.mono_in[:len(indata)])
        if self.inputs > 1:
            np.floor_divide(self.mono_in, self.inputs, out=self.mono_in)
        self.pair[:len(indata), 0] = self.mono_in[:len(indata)]

    def fan_out(self, outdata: np.ndarray) -> None:
        for channel in range(outdata.shape[1]):
            outdata[:, channel] = self.mono_out[:len(outdata)]


class UsbBridgeCodec:
    """The bridge between ``headset_device`` and ``gadget_device`` (parts of PortAudio device names).

    ``rate``/``block_frames`` are the recording's; ``gadget_rate`` is the rate
    the gadget runs at (48000 or 16000, as the image's configfs set it);
    ``headset_rate`` is chosen from what the headset takes when None. ``sd``
    is the sounddevice module (a seam for tests); ``settings`` tune the core.
    """

    def __init__(self, headset_device: str, gadget_device: str, *, clock: Clock, rate: int = 16000,
                 block_frames: int = 320, gadget_rate: int = 48000, headset_rate: int | None = None,
                 device_block_ms: float = 10.0, margin_ms: float = BridgeSettings.margin_ms,
                 queue_blocks: int = 100,
                 sd: ModuleType | None = None) -> None:
        check_layout(rate, block_frames, queue_blocks)
        self._sd = sd or _import_sounddevice()
        self._clock = clock
        self.rate, self.block_frames = rate, block_frames
        headset = find_device(self._sd, headset_device, "headset")
        gadget = find_device(self._sd, gadget_device, "USB gadget (the PC's side)")
        if headset["index"] == gadget["index"]:
            raise ConfigError(f"headset and gadget name the same audio device {headset['name']!r}; "
                              f"give each its own name in the board profile")
        if gadget_rate in GADGET_RATES:
            gadget_rate = choose_gadget_rate(lambda r: self._accepts(gadget, r), gadget_rate)
        if headset_rate is None:
            headset_rate = choose_headset_rate(lambda r: self._accepts(headset, r), gadget_rate)
        self.settings = BridgeSettings(rate=rate, block_frames=block_frames, headset_rate=headset_rate,
                                       gadget_rate=gadget_rate, device_block_ms=device_block_ms,
                                       margin_ms=margin_ms)
        self._core = BridgeCore(self.settings)
        self._headset = _Side("headset", headset, headset_rate, self.settings.headset_block, queue_blocks)
        self._gadget = _Side("gadget", gadget, gadget_rate, self.settings.gadget_block, queue_blocks)
        self._queue_blocks = queue_blocks
        self._lock = threading.Lock()  # the pump's state: core (but its pull_* methods), play queue
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._seq = 0
        self._lost: DeviceLost | None = None
        self._reopen: Iterator[float] | None = None
        self._reopen_at = 0.0
        logger.info("usb bridge found headset=%r gadget=%r rate=%d headset_rate=%d gadget_rate=%d "
                    "device_block_ms=%g", headset["name"], gadget["name"], rate, headset_rate, gadget_rate,
                    device_block_ms)

    def _accepts(self, device: dict[str, Any], samplerate: int) -> bool:
        try:
            self._sd.check_input_settings(device["index"], channels=1, dtype="int16", samplerate=samplerate)
            self._sd.check_output_settings(device["index"], channels=1, dtype="int16", samplerate=samplerate)
        except self._sd.PortAudioError:
            return False
        return True

    def start(self) -> None:
        if self._headset.stream is not None or self._closing.is_set():
            raise DeviceError("the USB bridge was already started; make a new codec")
        self._open(self._headset, self._headset_callback)
        self._open(self._gadget, self._gadget_callback)

    def _open(self, side: _Side, callback: Any) -> None:
        index = side.device["index"]
        try:
            side.stream = self._sd.Stream(
                device=(index, index), samplerate=side.rate, blocksize=side.block, dtype="int16",
                channels=(side.inputs, side.outputs), callback=callback,
                finished_callback=lambda: self._finished(side))
            side.stream.start()
        except self._sd.PortAudioError as error:
            side.stream = None
            raise DeviceError(f"cannot start the {side.name} audio device {side.device['name']!r} at "
                              f"{side.rate} Hz: {error}; is another program using it (`fuser -v /dev/snd/*`)?"
                              ) from error
        side.failed = False
        logger.info("usb bridge stream started side=%s name=%r rate=%d block=%d channels_in=%d "
                    "channels_out=%d", side.name, side.device["name"], side.rate, side.block, side.inputs,
                    side.outputs)

    def _headset_callback(self, indata: np.ndarray, outdata: np.ndarray, frames: int, time_info: object,
                          status: object) -> None:
        side = self._headset
        now = self._clock.monotonic()
        if status:
            side.count(status)
        self._core.pull_speaker(side.mono_out[:frames], side.pair[:frames, 1], now)
        side.fan_out(outdata)
        side.mix_down(indata)
        side.ring.push(side.pair[:frames])
        self._wake.set()

    def _gadget_callback(self, indata: np.ndarray, outdata: np.ndarray, frames: int, time_info: object,
                         status: object) -> None:
        side = self._gadget
        if status:
            side.count(status)
        self._core.pull_uplink(side.mono_out[:frames], self._clock.monotonic())
        side.fan_out(outdata)
        side.mix_down(indata)
        side.ring.push(side.pair[:frames])
        self._wake.set()

    def _finished(self, side: _Side) -> None:
        # PortAudio's thread, once the stream is inactive for any reason.
        if self._closing.is_set():
            return
        side.failed = True
        if side is self._headset:
            side.ring.fail(DeviceLost(f"the headset {side.device['name']!r} stopped delivering audio "
                                      f"(unplugged?); check its cable, the bridge resumes once it is back"))
        self._wake.set()

    def read(self, timeout: float | None = None) -> Block | None:
        """Pump the bridge until the next recorded block is complete; see the Codec contract."""
        if self._headset.stream is None:
            raise DeviceError("UsbBridgeCodec.read() before start(); call start() first")
        while not self._closing.is_set():
            with self._lock:
                frames = self._core.take_block()
            if frames is not None:
                seq, self._seq = self._seq, self._seq + 1
                return Block(seq=seq, t=seq * self.block_frames / self.rate, frames=frames)
            if self._lost is not None:
                raise DeviceLost(*self._lost.args)
            if not self._wake.wait(timeout):
                raise DeviceTimeout(f"no audio from the USB bridge's devices within {timeout} s; "
                                    f"are the headset and gadget streams running?")
            self._wake.clear()
            self._pump()
        return None

    def _pump(self) -> None:
        """What both callbacks captured, through the core, a few periods of each side at a time.

        Taking turns keeps one side's backlog from holding up the other's (the recorded blocks come
        with the headset's); a pass that leaves work behind wakes the next one at once.
        """
        for side, feed in ((self._gadget, self._feed_gadget), (self._headset, self._feed_headset)):
            for _ in range(PUMP_TURN):
                try:
                    item = side.ring.pop(timeout=0)
                except DeviceTimeout:
                    break
                except DeviceLost as lost:
                    if self._lost is None:
                        logger.warning("usb bridge headset lost name=%r", side.device["name"])
                    self._lost = lost
                    break
                if item is None:
                    return
                feed(item[1])
            else:
                self._wake.set()
        if self._gadget.failed:
            self._reopen_gadget()

    def _feed_headset(self, pair: np.ndarray) -> None:
        with self._lock:
            self._core.headset_in(pair[:, 0], pair[:, 1], self._clock.monotonic())

    def _feed_gadget(self, pair: np.ndarray) -> None:
        with self._lock:
            self._core.gadget_in(pair[:, 0], self._clock.monotonic())

    def _reopen_gadget(self) -> None:
        """The PC went away: try its stream again now and then; the headset side records meanwhile."""
        now = self._clock.monotonic()
        if self._reopen is None:
            logger.warning("usb bridge gadget stream ended name=%r (PC unplugged or suspended); "
                           "recording the headset side, reopening", self._gadget.device["name"])
            self._reopen = GADGET_REOPEN.delays()
            self._reopen_at = now + next(self._reopen)
        if now < self._reopen_at:
            return
        try:
            if self._gadget.stream is not None:
                self._gadget.stream.close(ignore_errors=True)
            self._follow_gadget_rate()
            self._open(self._gadget, self._gadget_callback)
            self._reopen = None
        except DeviceError as error:
            logger.info("usb bridge gadget still away: %s", error)
            self._reopen_at = now + next(self._reopen)

    def _follow_gadget_rate(self) -> None:
        """Before reopening: the PC may have chosen another of the gadget's rates meanwhile."""
        side = self._gadget
        rate = choose_gadget_rate(lambda r: self._accepts(side.device, r), side.rate)
        if rate == side.rate:
            return
        with self._lock:
            self._core.set_gadget_rate(rate)
        self.settings = self._core.settings
        self._gadget = _Side("gadget", side.device, rate, self.settings.gadget_block, self._queue_blocks)
        logger.warning("usb bridge gadget rate changed by the PC rate=%d was=%d", rate, side.rate)

    def play(self, samples: np.ndarray) -> None:
        samples = check_mono(samples)
        if self._closing.is_set():
            raise DeviceError("the USB bridge is closed; cannot play")
        with self._lock:
            self._core.play(samples)

    def play_pending(self) -> int:
        with self._lock:
            return self._core.play_pending()

    def stop_playing(self) -> None:
        with self._lock:
            self._core.stop_playing()

    def bridge_stats(self) -> BridgeStats:
        """Both directions' figures (levels, latency, learnt ppm), for the doctor and telemetry."""
        with self._lock:
            return self._core.stats()

    def stats(self) -> CodecStats:
        s = self.bridge_stats()
        xruns = self._headset.xruns + self._gadget.xruns
        return CodecStats(blocks=s.blocks, overruns=s.uplink.overruns + s.downlink.overruns + xruns,
                          underruns=s.uplink.underruns + s.downlink.underruns,
                          dropped_blocks=self._headset.ring.dropped + s.tap_dropped // self.block_frames)

    def close(self) -> None:
        if self._closing.is_set():
            return
        self._closing.set()
        for side in (self._headset, self._gadget):
            if side.stream is not None:
                side.stream.abort(ignore_errors=True)
                side.stream.close(ignore_errors=True)
            side.ring.close()
        self._wake.set()
        s = self._core.stats()
        logger.info("usb bridge closed blocks=%d underruns=%d/%d overruns=%d/%d ppm=%.0f/%.0f", s.blocks,
                    s.uplink.underruns, s.downlink.underruns, s.uplink.overruns, s.downlink.overruns,
                    s.uplink.ppm, s.downlink.ppm)

    def __enter__(self) -> UsbBridgeCodec:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
