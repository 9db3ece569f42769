"""The USB handset bridge, sans-IO: two directions between two USB clocks, the taps, the consent mix.

The box sits between a USB headset (its own clock, rate ``headset_rate``) and
a PC that sees the box's UAC2 gadget (the PC's clock, rate ``gadget_rate``)::

  headset mic ─► + consent ─► near tap (─► recording rate) ─► uplink: adaptive resampler ─► FIFO ─► gadget ─► PC
  headset speaker ◄─ + consent (agent) ◄─ far tap ◄─ FIFO ◄─ downlink: adaptive resampler ◄─ gadget ◄─ PC plays

Each direction (:class:`Direction`) resamples what its producer delivers to
the consumer's rate, with the step steered by a PI loop on the FIFO's level
(:mod:`.control`), and keeps the FIFO at ``margin_ms`` plus one producer
block. The taps are both taken on the headset's clock, one headset block at a
time, so near and far are sample-aligned with each other:

- **near** is the headset mic with the consent audio mixed in: exactly what
  enters the uplink resampler (the PC receives it resampled to its clock), as
  an analog board's near channel records the announcement as it went into the
  call;
- **far** is exactly what the headset is given from the downlink (the PC's
  audio already resampled to the headset's clock), before the consent audio
  is added for the agent.

Both are converted from the headset rate to the recording rate by a fixed
band-limited resampler, so when the headset runs at the recording rate the
recording equals what passed, sample for sample.

Threads (the real codec): :meth:`BridgeCore.pull_speaker` and
:meth:`BridgeCore.pull_uplink` are called from the two devices' audio
callbacks; they only copy (no allocation), each direction's FIFO having one
writer and one reader. Every other method belongs to one thread, the pump.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from linetap.drivers.audio.codec import PlaybackQueue
from linetap.drivers.usbbridge.control import RateController
from linetap.drivers.usbbridge.fifo import SampleRing
from linetap.drivers.usbbridge.resampler import FractionalResampler
from linetap.firmware.errors import ConfigError

RECORDING_RATES = (8000, 16000, 48000)  # the pipeline's rates (audio.rate)
GADGET_RATES = (16000, 48000)  # what the gadget offers the PC: what softphones open
HEADSET_RATES = (8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000, 96000)


def _number(name: str, value: object, low: float, high: float, fix: str, *, integer: bool = False) -> float:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value) \
            or not low <= value <= high:
        raise ConfigError(f"usb bridge {name} = {value!r} is not {'an integer' if integer else 'a number'} "
                          f"in {low:g}..{high:g}; {fix}")
    return value


@dataclass(frozen=True)
class BridgeSettings:
    """What the bridge needs to know; every value is checked, a bad one refused by name."""

    rate: int = 16000  # recording (pipeline) rate of the taps
    block_frames: int = 320  # frames per recorded block at ``rate``
    headset_rate: int = 48000
    gadget_rate: int = 48000
    device_block_ms: float = 10.0  # period of both devices' streams
    # FIFO level kept beyond one producer block: absorbs callback jitter and the pump's own delay (a
    # Python thread that waits for the GIL behind the call loop: up to the 5 ms switch interval).
    margin_ms: float = 5.0
    max_ppm: float = 1000.0  # adjustment range; USB clocks are within ±300 ppm, cheap ones ±500
    prompt_to_agent: bool = True  # the agent hears the consent audio too, as a handset's sidetone gives it

    def __post_init__(self) -> None:
        for name, allowed in (("rate", RECORDING_RATES), ("gadget_rate", GADGET_RATES),
                              ("headset_rate", HEADSET_RATES)):
            value = getattr(self, name)
            if isinstance(value, bool) or value not in allowed:
                raise ConfigError(f"usb bridge {name} = {value!r} is not supported; use one of {allowed}")
        _number("block_frames", self.block_frames, 1, self.rate, f"e.g. {self.rate // 50} for 20 ms",
                integer=True)
        _number("device_block_ms", self.device_block_ms, 1, 100, "USB audio runs well at 5-20 ms, e.g. 10")
        _number("margin_ms", self.margin_ms, 0.5, 100, "e.g. 5 (raise it if underruns are counted)")
        _number("max_ppm", self.max_ppm, 50, 5000, "e.g. 1000 (USB clocks are within ±500 ppm)")
        if not isinstance(self.prompt_to_agent, bool):
            raise ConfigError(f"usb bridge prompt_to_agent = {self.prompt_to_agent!r} must be true or false")

    @property
    def headset_block(self) -> int:
        return max(1, round(self.headset_rate * self.device_block_ms / 1000))

    @property
    def gadget_block(self) -> int:
        return max(1, round(self.gadget_rate * self.device_block_ms / 1000))


@dataclass(frozen=True)
class DirectionStats:
    """One direction's counters and figures since start."""

    underruns: int  # the consumer found the FIFO short while the producer was active
    overruns: int  # produced audio that did not fit, or was dropped to resync a level far too high
    level_ms: float  # FIFO level at the last push, consumer's progress since its last pull taken off
    latency_ms: float  # added one-way latency now: level plus the resampler's delay
    ppm: float  # the clock mismatch learnt (producer over consumer)
    correction_ppm: float  # the step correction in use
    frames_in: int  # frames the producer delivered (the doctor sees the direction flowing)
    frames_out: int  # frames the consumer took from the FIFO


@dataclass(frozen=True)
class BridgeStats:
    uplink: DirectionStats
    downlink: DirectionStats
    blocks: int  # recorded blocks handed out
    tap_dropped: int  # tap frames dropped because nobody took the blocks


class Direction:
    """One way through the bridge: the producer's audio, resampled to the consumer's clock, in a FIFO."""

    def __init__(self, name: str, in_rate: int, out_rate: int, *, in_block: int, out_block: int,
                 margin_s: float, max_ppm: float) -> None:
        self.name = name
        self.out_rate = out_rate
        self.resampler = FractionalResampler(in_rate, out_rate, adaptive=True)
        # The level right after a push: the margin plus the block just pushed.
        self.target_s = margin_s + in_block / in_rate
        self.target_frames = round(self.target_s * out_rate)
        self.high_frames = self.target_frames + 3 * out_block + round(0.02 * out_rate)
        self.fifo = SampleRing(self.high_frames + 2 * out_block + round(0.02 * out_rate))
        self.controller = RateController(self.target_s, max_ppm)
        self._in_period = in_block / in_rate
        self._out_period = out_block / out_rate
        self._push_t: float | None = None
        self._pull_t: float | None = None
        self._pull_frames = out_block
        self._starved = True  # refill to the target before the next push
        self.underruns = 0
        self.overruns = 0
        self.produced = 0
        self.consumed = 0
        self.level_s = 0.0

    def _active(self, last: float | None, period: float, now: float) -> bool:
        return last is not None and now - last < 4 * period + 0.05

    def produce(self, samples: np.ndarray, now: float) -> None:
        """The producer delivered ``samples`` (pump thread)."""
        out = self.resampler.process(samples)
        self.produced += len(samples)
        if not self._active(self._pull_t, self._out_period, now):
            self._starved = True  # nobody is listening (yet): keep nothing, centre once they are
            self._push_t = now
            return
        if self._starved:
            out = self._centre(out, now)
        stored = self.fifo.write(out)
        if stored < len(out):
            self.overruns += 1
        self._push_t = now
        self.level_s = (self.fifo.level - self._consumed_since_pull(now)) / self.out_rate
        self.resampler.set_correction(self.controller.update(self.level_s, now))

    def _centre(self, out: np.ndarray, now: float) -> np.ndarray:
        """Put the level at its target at once (a start, an underrun, a consumer back): silence or a cut."""
        self._starved = False
        self.controller.restart_filter()
        short = self.target_frames - (self.fifo.level + len(out) - round(self._consumed_since_pull(now)))
        if short >= 0:
            self.fifo.write_silence(short)
            return out
        return out[min(len(out), -short):]

    def _consumed_since_pull(self, now: float) -> float:
        """What the consumer has played of its last block by ``now`` (its FIFO read is all at once)."""
        if self._pull_t is None:
            return 0.0
        return min(max(now - self._pull_t, 0.0) * self.out_rate, self._pull_frames)

    def pull(self, out: np.ndarray, now: float) -> None:
        """Fill ``out`` for the consumer (its audio callback: copies only)."""
        producing = self._active(self._push_t, self._in_period, now)
        if not self._active(self._pull_t, self._out_period, now):
            self._starved = True  # this consumer (re)starts: the producer centres the level
        level = self.fifo.level
        if producing and level > self.high_frames:
            # A clock jump left far too much queued: drop back to the target at once. After the
            # consumer's own pause (a PC waking up) that is no fault of the bridge's.
            self.fifo.discard(level - self.target_frames)
            if self._active(self._pull_t, self._out_period, now):
                self.overruns += 1
        got = self.fifo.read_into(out)
        self.consumed += got
        if got < len(out) and producing and not self._starved:
            self.underruns += 1
            self._starved = True
        self._pull_t, self._pull_frames = now, len(out)

    def latency_s(self) -> float:
        return self.level_s + self.resampler.delay_in / self.resampler.in_rate

    def stats(self) -> DirectionStats:
        return DirectionStats(underruns=self.underruns, overruns=self.overruns,
                              level_ms=self.level_s * 1000, latency_ms=self.latency_s() * 1000,
                              ppm=self.controller.ppm, correction_ppm=self.controller.correction * 1e6,
                              frames_in=self.produced, frames_out=self.consumed)


def _mix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.clip(a.astype(np.int32) + b, -32768, 32767).astype(np.int16)


class BridgeCore:
    """Both directions, the taps at the recording rate and the consent audio; see the module docstring."""

    def __init__(self, settings: BridgeSettings) -> None:
        self.settings = s = settings
        self.uplink, self.downlink = self._directions()
        same = s.headset_rate == s.rate
        self._near_tap = None if same else FractionalResampler(s.headset_rate, s.rate)
        self._far_tap = None if same else FractionalResampler(s.headset_rate, s.rate)
        tap_capacity = s.rate * 2 + 2 * s.block_frames
        self._near = SampleRing(tap_capacity)
        self._far = SampleRing(tap_capacity)
        self._agent = SampleRing(8 * s.headset_block)  # consent audio on its way to the headset speaker
        self._agent_scratch = np.zeros(s.headset_block * 8, dtype=np.int16)
        self._mix_scratch = np.zeros(s.headset_block * 8, dtype=np.int32)
        self._prompt = PlaybackQueue()  # consent audio at the headset rate, not yet mixed
        self.blocks = 0
        self.tap_dropped = 0

    def _directions(self) -> tuple[Direction, Direction]:
        s = self.settings
        margin_s = s.margin_ms / 1000
        return (Direction("uplink", s.headset_rate, s.gadget_rate, in_block=s.headset_block,
                          out_block=s.gadget_block, margin_s=margin_s, max_ppm=s.max_ppm),
                Direction("downlink", s.gadget_rate, s.headset_rate, in_block=s.gadget_block,
                          out_block=s.headset_block, margin_s=margin_s, max_ppm=s.max_ppm))

    def set_gadget_rate(self, rate: int) -> None:
        """The PC switched the gadget to ``rate``: both directions start again at it (pump thread).

        The taps and the consent queue are on the headset's side and carry on; the directions'
        counters start again. A callback still holding the old direction finishes its copy there.
        """
        self.settings = dataclasses.replace(self.settings, gadget_rate=rate)
        self.uplink, self.downlink = self._directions()

    # -- the headset's clock --

    def pull_speaker(self, out: np.ndarray, far: np.ndarray, now: float) -> None:
        """Fill ``far`` with the downlink and ``out`` with it plus the agent's consent audio (callback).

        Both are mono int16 of one headset block (at most 8 device blocks); no allocation.
        Pass ``far`` back to :meth:`headset_in` with the mic block of the same period.
        """
        self.downlink.pull(far, now)
        n = len(out)
        agent = self._agent_scratch[:n]
        if self.settings.prompt_to_agent and self._agent.read_into(agent):
            mixed = self._mix_scratch[:n]
            np.add(far, agent, out=mixed, dtype=np.int32)
            np.clip(mixed, -32768, 32767, out=mixed)
            out[:] = mixed
        else:
            out[:] = far

    def headset_in(self, mic: np.ndarray, far: np.ndarray, now: float) -> None:
        """One headset period: its mic block and the ``far`` block it was given (pump thread)."""
        prompt = self._take_prompt(len(mic))
        near = mic if prompt is None else _mix(mic, prompt)
        if prompt is not None and self.settings.prompt_to_agent:
            self._agent.write(prompt)
        self.uplink.produce(near, now)
        for tap, resampler, samples in ((self._near, self._near_tap, near), (self._far, self._far_tap, far)):
            converted = samples if resampler is None else resampler.process(samples)
            self.tap_dropped += len(converted) - tap.write(converted)

    # -- the PC's clock --

    def pull_uplink(self, out: np.ndarray, now: float) -> None:
        """Fill ``out`` (mono int16, one gadget block) with what the PC receives (callback; no allocation)."""
        self.uplink.pull(out, now)

    def gadget_in(self, pc: np.ndarray, now: float) -> None:
        """One gadget period: the block the PC played (pump thread)."""
        self.downlink.produce(pc, now)

    # -- the recorder's side --

    def take_block(self) -> np.ndarray | None:
        """The next recorded block, ``(block_frames, 2)`` int16 near/far, or None until one is complete."""
        size = self.settings.block_frames
        if self._near.level < size or self._far.level < size:
            return None
        frames = np.empty((size, 2), dtype=np.int16)
        self._near.read_into(frames[:, 0])
        self._far.read_into(frames[:, 1])
        self.blocks += 1
        return frames

    def play(self, samples: np.ndarray) -> None:
        """Queue mono int16 consent audio at the recording rate after what is queued."""
        s = self.settings
        if s.rate != s.headset_rate and len(samples):
            converter = FractionalResampler(s.rate, s.headset_rate)
            wanted = math.ceil(len(samples) * s.headset_rate / s.rate)
            tail = np.zeros(converter.delay_in + 1, dtype=np.int16)
            samples = np.concatenate([converter.process(samples), converter.process(tail)])[:wanted]
        if len(samples):
            self._prompt.push(np.array(samples, dtype=np.int16))

    def play_pending(self) -> int:
        """Consent frames (at the recording rate) queued but not yet mixed."""
        s = self.settings
        return math.ceil(self._prompt.pending() * s.rate / s.headset_rate)

    def stop_playing(self) -> None:
        self._prompt.clear()

    def _take_prompt(self, count: int) -> np.ndarray | None:
        if not self._prompt.pending():
            return None
        out = np.empty(count, dtype=np.int16)
        self._prompt.read_into(out)
        return out

    def stats(self) -> BridgeStats:
        return BridgeStats(uplink=self.uplink.stats(), downlink=self.downlink.stats(),
                           blocks=self.blocks, tap_dropped=self.tap_dropped)
