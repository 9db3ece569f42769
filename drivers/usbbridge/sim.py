"""A simulated headset and a simulated PC around the bridge core, each on its own clock.

Shipped with the package, like :class:`linetap.drivers.audio.SimCodec`, for
the tests, the benchmark and the simulated board:

- :class:`SimEndpoint` is one USB audio device's side as the bridge sees it:
  periods of ``block`` frames at ``rate`` on a clock ``ppm`` off nominal,
  each period's callback late by up to ``jitter_s``; what it sends comes from
  a signal (an array, or a function of the sample index so that an hour
  needs no memory), what it is given is kept (or passed to ``on_receive``);
- :class:`SimRig` runs the core between a headset and a host in time order,
  as the real codec's two audio callbacks and its pump would (each callback
  pulls, then its input is pumped at the same instant);
- :class:`SimUsbBridge` is the :class:`~linetap.drivers.audio.Codec` on top,
  paced by the injected clock like ``SimCodec``: the board's simulated codec
  for the ``pi4-usb-inline`` profile on the ``sim`` board.

Faults to inject: :meth:`SimEndpoint.set_ppm` (a rate step),
:meth:`SimEndpoint.jump` (a clock jump: the device's periods stop for a while
and carry on from a new phase), :meth:`SimEndpoint.pause` (the PC suspends,
the headset is unplugged) and :meth:`SimEndpoint.unplug`.
"""

from __future__ import annotations

import math
import os
import random
from collections import deque
from collections.abc import Callable

import numpy as np

from linetap.drivers.audio.codec import Block, CodecStats, check_layout, check_mono
from linetap.drivers.audio.sources import SampleSource, as_source
from linetap.drivers.usbbridge.core import BridgeCore, BridgeSettings
from linetap.drivers.usbbridge.resampler import FractionalResampler
from linetap.firmware.clock import Clock
from linetap.firmware.errors import ConfigError, DeviceError, DeviceLost, DeviceTimeout

Signal = np.ndarray | Callable[[int, int], np.ndarray]  # array, or f(first_sample, count) -> int16


class SimEndpoint:
    """One simulated USB audio device: its clock, what it sends, what it was given."""

    def __init__(self, name: str, *, rate: int, block: int, signal: Signal | None = None,
                 ppm: float = 0.0, jitter_s: float = 0.0, start_s: float = 0.0, seed: int = 0,
                 keep: bool = True, on_receive: Callable[[np.ndarray, float], None] | None = None) -> None:
        if not (isinstance(ppm, (int, float)) and math.isfinite(ppm) and abs(ppm) <= 5000):
            raise ConfigError(f"simulated {name} ppm = {ppm!r}: give a clock offset within ±5000 ppm")
        if not (isinstance(jitter_s, (int, float)) and 0 <= jitter_s < block / rate):
            raise ConfigError(f"simulated {name} jitter_s = {jitter_s!r}: must be 0 or more and less than "
                              f"one period ({block / rate:g} s)")
        self.name, self.rate, self.block = name, rate, block
        self._signal = signal
        self._rng = random.Random(seed)
        self.jitter_s = jitter_s
        self._period_start = start_s  # ideal start of the next period on the simulation's clock
        self._period_s = 0.0
        self.set_ppm(ppm)
        self.next_t = self._period_start + self._period_s  # when the next period's callback runs
        self.sent = 0  # samples delivered so far
        self.exhausted = False  # a finite signal has been sent whole
        self._kept: list[np.ndarray] | None = [] if keep else None
        self._on_receive = on_receive
        self.ticks: list[float] = []  # callback times, when timing is logged
        self.log_times = False
        self._paused_until = -math.inf
        self.unplugged_at: float | None = None

    def set_ppm(self, ppm: float) -> None:
        """The device's clock runs ``ppm`` fast from now on (a rate step)."""
        self.ppm = ppm
        self._period_s = self.block / (self.rate * (1 + ppm * 1e-6))

    def jump(self, seconds: float) -> None:
        """The device's periods stop for ``seconds`` and carry on from there (a clock jump)."""
        self._period_start += seconds
        self.next_t += seconds

    def pause(self, until: float) -> None:
        """No periods until ``until`` (the PC suspended, the cable out and back); the clock keeps running."""
        self._paused_until = until

    def unplug(self, at: float) -> None:
        """The device goes away for good at ``at``."""
        self.unplugged_at = at

    def gone(self, t: float) -> bool:
        return self.unplugged_at is not None and t >= self.unplugged_at

    def advance(self) -> bool:
        """Move to the following period; False when this one is skipped (paused)."""
        t = self.next_t
        self._period_start += self._period_s
        jitter = self._rng.uniform(0, self.jitter_s) if self.jitter_s else 0.0
        self.next_t = self._period_start + self._period_s + jitter
        if t < self._paused_until:
            return False
        if self.log_times:
            self.ticks.append(t)
        return True

    def send(self) -> np.ndarray:
        """The next period's samples (silence after an array ends)."""
        first, count = self.sent, self.block
        self.sent += count
        if self._signal is None:
            return np.zeros(count, dtype=np.int16)
        if callable(self._signal):
            out = np.asarray(self._signal(first, count), dtype=np.int16)
            self.exhausted = bool(getattr(self._signal, "ended", False))
            return out
        out = np.zeros(count, dtype=np.int16)
        piece = self._signal[first:first + count]
        out[:len(piece)] = piece
        self.exhausted = first + count >= len(self._signal)
        return out

    def receive(self, samples: np.ndarray, t: float) -> None:
        if self._kept is not None:
            self._kept.append(samples.copy())
        if self._on_receive is not None:
            self._on_receive(samples, t)

    @property
    def received(self) -> np.ndarray:
        """Everything this device was given, in order."""
        if self._kept is None:
            raise DeviceError(f"simulated {self.name} does not keep what it receives (keep=False)")
        return np.concatenate(self._kept) if self._kept else np.zeros(0, dtype=np.int16)


class SourceSignal:
    """A :class:`~linetap.drivers.audio.SampleSource` at the recording rate, sent at a device's rate.

    Converted on the fly by the fixed resampler, read as the device asks, so a
    long replay costs no more memory than a short one; :attr:`ended` once the
    source and the resampler's tail are used up.
    """

    def __init__(self, source: SampleSource, rate: int, device_rate: int) -> None:
        self._source = source
        self._resampler = None if rate == device_rate else FractionalResampler(rate, device_rate)
        self._held = np.zeros(0, dtype=np.int16)
        self._source_done = False
        self.ended = False

    def __call__(self, first: int, count: int) -> np.ndarray:
        while len(self._held) < count and not self._source_done:
            piece = np.asarray(self._source.read(max(count, 1024)), dtype=np.int16)
            if not len(piece):
                self._source_done = True
                if self._resampler is None:
                    break
                piece = np.zeros(self._resampler.delay_in + 1, dtype=np.int16)  # let the filter ring out
            converted = piece if self._resampler is None else self._resampler.process(piece)
            self._held = np.concatenate([self._held, converted])
        out = np.zeros(count, dtype=np.int16)
        take = min(count, len(self._held))
        out[:take] = self._held[:take]
        self._held = self._held[take:]
        self.ended = self._source_done and not len(self._held)
        return out

    def close(self) -> None:
        self._source.close()


class SimRig:
    """The bridge core between a simulated headset and a simulated PC, run in time order.

    Each device period runs its callback (the pull) at the period's time; the
    pump takes the period's input after a delay of up to ``pump_delay_s``
    (uniform, in the order the inputs came, one pump thread), as the real
    codec's reader thread does when it waits for the interpreter.
    """

    def __init__(self, core: BridgeCore, headset: SimEndpoint, host: SimEndpoint, *,
                 pump_delay_s: float = 0.0, seed: int = 3) -> None:
        s = core.settings
        if (headset.rate, headset.block, host.rate, host.block) != (s.headset_rate, s.headset_block,
                                                                    s.gadget_rate, s.gadget_block):
            raise ConfigError(f"simulated devices ({headset.rate} Hz/{headset.block}, {host.rate} Hz/"
                              f"{host.block}) do not match the bridge settings ({s.headset_rate} Hz/"
                              f"{s.headset_block}, {s.gadget_rate} Hz/{s.gadget_block})")
        if not (isinstance(pump_delay_s, (int, float)) and 0 <= pump_delay_s <= 0.1):
            raise ConfigError(f"simulated pump_delay_s = {pump_delay_s!r}: give 0 to 0.1 s")
        self.core, self.headset, self.host = core, headset, host
        self._speaker = np.zeros(headset.block, dtype=np.int16)
        self._far = np.zeros(headset.block, dtype=np.int16)
        self._uplink = np.zeros(host.block, dtype=np.int16)
        self._pump_delay_s = pump_delay_s
        self._rng = random.Random(seed)
        self._pump: deque[tuple[float, Callable[[float], None]]] = deque()  # (when, the work)
        self.now = 0.0

    def next_time(self) -> float:
        return min(self.headset.next_t, self.host.next_t, self._pump[0][0] if self._pump else math.inf)

    def step(self) -> None:
        """Run the next thing due: a device period's callback, or the pump's work for an earlier one.

        Raises DeviceLost when that period is the headset's and it is unplugged.
        """
        if self._pump and self._pump[0][0] <= min(self.headset.next_t, self.host.next_t):
            t, work = self._pump.popleft()
            self.now = t
            work(t)
            return
        device = self.headset if self.headset.next_t <= self.host.next_t else self.host
        t = device.next_t
        self.now = t
        if device.gone(t):
            if device is self.headset:
                raise DeviceLost(f"simulated headset unplugged at {device.unplugged_at:g} s")
            device.next_t = math.inf  # a PC gone for good: the box keeps recording the headset side
            return
        if not device.advance():
            return
        if device is self.headset:
            self.core.pull_speaker(self._speaker, self._far, t)
            self.headset.receive(self._speaker, t)
            mic, far = self.headset.send(), self._far.copy()
            self._later(t, lambda now: self.core.headset_in(mic, far, now))
        else:
            self.core.pull_uplink(self._uplink, t)
            self.host.receive(self._uplink, t)
            pc = self.host.send()
            self._later(t, lambda now: self.core.gadget_in(pc, now))

    def _later(self, t: float, work: Callable[[float], None]) -> None:
        if not self._pump_delay_s:
            work(t)
            return
        due = t + self._rng.uniform(0, self._pump_delay_s)
        self._pump.append((max(due, self._pump[-1][0]) if self._pump else due, work))

    def run(self, seconds: float, on_step: Callable[[SimRig], None] | None = None) -> None:
        """Run everything due in the next ``seconds`` of simulated time."""
        end = self.now + seconds
        while self.next_time() <= end:
            self.step()
            if on_step is not None:
                on_step(self)
        self.now = end


class SimUsbBridge:
    """The bridge as a :class:`~linetap.drivers.audio.Codec` on simulated devices, paced by ``clock``.

    ``near`` (what the headset's mic hears) and ``far`` (what the PC plays)
    are what :class:`~linetap.drivers.audio.SimCodec` takes: arrays, WAV paths
    or sample sources at the recording ``rate``, converted to the devices'
    rates as they are sent; a side not given is silence. Once every side
    given has ended, ``read()`` returns None (a replay's end); with neither,
    the line never ends. The headset runs ``headset_ppm`` and the PC
    ``host_ppm`` off nominal (300 apart each way by default), callbacks late
    by up to ``jitter_s``. Or pass ready ``headset``/``host`` endpoints.

    Block ``k`` is handed out once the simulated devices have produced it,
    sleeping on the clock until the device period that completes it: with
    ``ManualClock`` a call runs as fast as the machine allows, with
    ``SystemClock`` in real time. :attr:`rig` reaches the devices and the core.
    """

    def __init__(self, near: np.ndarray | str | os.PathLike | SampleSource | None = None,
                 far: np.ndarray | str | os.PathLike | SampleSource | None = None, *, clock: Clock,
                 rate: int = 16000, block_frames: int = 320, headset_ppm: float = 300.0,
                 host_ppm: float = -300.0, jitter_s: float = 0.0005, keep_received: bool = False,
                 headset: SimEndpoint | None = None, host: SimEndpoint | None = None,
                 settings: BridgeSettings | None = None) -> None:
        check_layout(rate, block_frames, 2)
        base = settings or BridgeSettings(rate=rate, block_frames=block_frames)
        if (base.rate, base.block_frames) != (rate, block_frames):
            raise ConfigError(f"bridge settings rate {base.rate}/block {base.block_frames} differ from the "
                              f"codec's {rate}/{block_frames}; give one or the other")
        self.rate, self.block_frames = rate, block_frames
        self._clock = clock
        self._signals = [None if side is None else SourceSignal(as_source(side, name, rate), rate, device_rate)
                         for side, name, device_rate in ((near, "near", base.headset_rate),
                                                         (far, "far", base.gadget_rate))]
        self._finite = [signal is not None for signal in self._signals]
        headset = headset or SimEndpoint("headset", rate=base.headset_rate, block=base.headset_block,
                                         ppm=headset_ppm, jitter_s=jitter_s, seed=1, keep=keep_received,
                                         signal=self._signals[0])
        host = host or SimEndpoint("host", rate=base.gadget_rate, block=base.gadget_block, ppm=host_ppm,
                                   jitter_s=jitter_s, seed=2, start_s=0.0037, keep=keep_received,
                                   signal=self._signals[1])
        self.rig = SimRig(BridgeCore(base), headset, host)
        self._start: float | None = None
        self._seq = 0
        self._lost: DeviceLost | None = None
        self._end_at: float | None = None
        self._closed = False

    def _ended(self) -> bool:
        """Every side given a source has sent it whole (never, when none was given)."""
        ends = [device.exhausted for device, finite in zip((self.rig.headset, self.rig.host), self._finite)
                if finite]
        return bool(ends) and all(ends)

    def start(self) -> None:
        if self._start is not None:
            raise DeviceError("the simulated USB bridge was already started; make a new one")
        self._start = self._clock.monotonic()

    def read(self, timeout: float | None = None) -> Block | None:
        if self._start is None:
            raise DeviceError("SimUsbBridge.read() before start(); call start() first")
        core = self.rig.core
        while not self._closed:
            frames = core.take_block()
            if frames is not None:
                seq, self._seq = self._seq, self._seq + 1
                return Block(seq=seq, t=seq * self.block_frames / self.rate, frames=frames)
            if self._lost is not None:
                raise DeviceLost(*self._lost.args)
            if self._ended():
                # What the PC sent last is still on its way through the downlink's FIFO.
                self._end_at = self.rig.now + 0.1 if self._end_at is None else self._end_at
                if self.rig.now >= self._end_at:
                    return None
            due = self._start + self.rig.next_time() - self._clock.monotonic()
            if timeout is not None and due > timeout:
                self._clock.sleep(timeout)
                raise DeviceTimeout(f"no audio block from the simulated USB bridge within {timeout} s")
            self._clock.sleep(due)
            try:
                self.rig.step()
            except DeviceLost as lost:
                self._lost = DeviceLost(f"{lost}; check the headset's cable, the bridge resumes when "
                                        f"it is back and the service restarts")
        return None

    def play(self, samples: np.ndarray) -> None:
        self.rig.core.play(check_mono(samples))

    def play_pending(self) -> int:
        return self.rig.core.play_pending()

    def stop_playing(self) -> None:
        self.rig.core.stop_playing()

    def stats(self) -> CodecStats:
        s = self.rig.core.stats()
        return CodecStats(blocks=s.blocks, overruns=s.uplink.overruns + s.downlink.overruns,
                          underruns=s.uplink.underruns + s.downlink.underruns,
                          dropped_blocks=s.tap_dropped // self.block_frames)

    def close(self) -> None:
        self._closed = True
        for signal in self._signals:
            if signal is not None:
                signal.close()
        self._signals = [None, None]

    def __enter__(self) -> SimUsbBridge:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
