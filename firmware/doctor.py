"""``linetap doctor``: check each part of a box an installer can get wrong.

The checks run in a fixed order, one function each, from the table
:data:`CHECKS`. Each takes a :class:`Context` (config file, data dir, clock,
the :class:`BoardParts` that builds the devices) and returns one
:class:`CheckResult`: a status (``pass``, ``warn``, ``fail``, ``skip``), a
one-line finding and, on ``warn`` and ``fail``, the fix: which file or key,
which command, which wire. A check builds only the device it needs and
closes it again, so a missing codec does not hide a GPIO mistake, and a test
can run any check alone.

How the signal checks decide:

- ``signal`` listens ``listen_s`` seconds (a test call should be in progress)
  and takes each channel's speech level as the 90th percentile of its 20 ms
  block levels. A channel below ``calls.vad_min_level_dbfs`` (the level the
  box takes for silence) has no signal; one with samples at full scale clips.
- ``channels`` plays a 1004 Hz test tone (the telephone test-tone frequency,
  at the warning tone's level, half a second) into the line-out channels and
  measures that one frequency on both inputs, before and after. The
  announcement is injected into the mic pair, the very pair the near input
  taps, so the tone must come back loudest on near; the far input hears it
  only through the phone's sidetone. Louder on far by 6 dB or more means near
  and far are swapped; heard on neither means the announcement does not
  reach the call; within 6 dB of each other cannot be decided and is a warning.

Doctor may run next to the service, so it never changes the spool: it reads
the catalogue, the quarantine folder and the manifests, and leaves recovery to
the service's next start.

Nothing here prints or logs key material or caller data: keys are named by
file and fingerprint, and the checks look at no call records.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import sqlite3
import ssl
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
from cryptography import x509
from cryptography.x509.oid import NameOID
from gpiozero.exc import GPIOZeroError

from linetap.drivers.audio import Block, Codec, CodecStats, SimCodec, tone
from linetap.drivers.events import HookChanged
from linetap.drivers.gpio import Panel
from linetap.drivers.line import CALLER_ID_COMMANDS, SimModem, V253Line
from linetap.firmware import keys, spool
from linetap.firmware.app import board_pin_factory, make_panel, sound_device_codec
from linetap.firmware.board import HEADER_PIN
from linetap.firmware.clock import Clock, ManualClock
from linetap.firmware.config import Config, load_config
from linetap.firmware.dsp.levels import clip_count, peak_dbfs, rms_dbfs
from linetap.firmware.errors import ConfigError, DeviceError, DeviceLost, DeviceMissing, LinetapError

logger = logging.getLogger(__name__)

Status = Literal["pass", "warn", "fail", "skip"]
HookStep = Literal["lift", "replace"]

SERVICE_CONFIG = "/etc/linetap/linetap.toml"
STOP_SERVICE = "stop the service first (`sudo systemctl stop linetap`), it holds the devices"
TEST_TONE_HZ = 1004.0  # the telephone network's test-tone frequency: in band, unlike speech formants
TEST_TONE_S = 0.5
TONE_WINDOW_S = 1.0  # listened to before and after the tone starts; covers the codec's round trip
HEARD_ABOVE_BASELINE_DB = 10.0
SWAP_MARGIN_DB = 6.0
QUIET_PEAK_DBFS = -30.0  # speech peaks below this leave the recording noisy; aim for -12 dBFS
CERT_RENEW_DAYS = 30
READ_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class CheckResult:
    """What one check found; ``fix`` is set for ``warn`` and ``fail``."""

    name: str
    status: Status
    finding: str
    fix: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


def passed(name: str, finding: str, **details: Any) -> CheckResult:
    return CheckResult(name, "pass", finding, None, details)


def warned(name: str, finding: str, fix: str, **details: Any) -> CheckResult:
    return CheckResult(name, "warn", finding, fix, details)


def failed(name: str, finding: str, fix: str, **details: Any) -> CheckResult:
    return CheckResult(name, "fail", finding, fix, details)


def skipped(name: str, why: str, **details: Any) -> CheckResult:
    return CheckResult(name, "skip", why, None, details)


# ------------------------------------------------------------ the devices --

class SimTap:
    """The simulated board's handset-cord tap around a :class:`SimCodec`.

    A SimCodec keeps what is played apart from what it captures; on a real
    box the injection transformer puts line out onto the mic pair, which the
    near input taps, and the phone's sidetone carries a little of it to the
    far input. This models that wiring (with no delay: it is all analog),
    so the ``channels`` check sees on the simulated board what it would see
    on a correctly wired box. ``swapped`` exchanges the two inputs (the L and
    R wires crossed); ``line_out_connected=False`` leaves the injection
    transformer unconnected.
    """

    def __init__(self, codec: SimCodec, *, swapped: bool = False, line_out_connected: bool = True,
                 injection_db: float = -6.0, sidetone_db: float = -26.0) -> None:
        self._codec = codec
        self.rate = codec.rate
        self.block_frames = codec.block_frames
        self._swapped = swapped
        gains = (10 ** (injection_db / 20), 10 ** (sidetone_db / 20)) if line_out_connected else (0.0, 0.0)
        self._gains = np.array(gains)

    def start(self) -> None:
        self._codec.start()

    def read(self, timeout: float | None = None) -> Block | None:
        block = self._codec.read(timeout)
        if block is None:
            return None
        # SimCodec plays one block of the queue for each block it captures, aligned with it.
        line = self._codec.played[-len(block.frames):].astype(np.float64)
        mixed = block.frames.astype(np.float64) + line[:, None] * self._gains[None, :]
        frames = np.clip(np.rint(mixed), -32768, 32767).astype(np.int16)
        if self._swapped:
            frames = frames[:, ::-1].copy()
        return Block(block.seq, block.t, frames)

    def play(self, samples: np.ndarray) -> None:
        self._codec.play(samples)

    def play_pending(self) -> int:
        return self._codec.play_pending()

    def stop_playing(self) -> None:
        self._codec.stop_playing()

    def stats(self) -> CodecStats:
        return self._codec.stats()

    def close(self) -> None:
        self._codec.close()


@cache
def _test_call(rate: int) -> tuple[np.ndarray, np.ndarray]:
    """The bundled conversation with each side's leading silence cut, so both sides talk at once."""
    from linetap.firmware.demo import bundled_speech

    near, far = bundled_speech(rate)
    return np.trim_zeros(near, "f"), np.trim_zeros(far, "f")


class BoardParts:
    """Builds the devices of ``config``'s board one at a time, as the service would.

    On the simulated board the codec is a :class:`SimTap` fed with the
    bundled two-sided conversation (or ``sim_near``/``sim_far``) and paced by
    its own :class:`ManualClock`, the pins are ``pin_factory`` (gpiozero's
    MockFactory; the handset starts on its cradle) and the modem is
    ``modem``; tests pass their own to drive them. A real board's devices
    are opened by name, and a missing one is an error, never the simulation.
    """

    def __init__(self, *, pin_factory: Any = None, modem: SimModem | None = None,
                 sim_near: np.ndarray | None = None, sim_far: np.ndarray | None = None,
                 swapped: bool = False, line_out_connected: bool = True,
                 modem_timeout_s: float = 2.0) -> None:
        self._pin_factory = pin_factory
        self._modem = modem
        self._own_factory = False
        self._own_modem = False
        self._sim_near, self._sim_far = sim_near, sim_far
        self._swapped, self._line_out_connected = swapped, line_out_connected
        self.modem_timeout_s = modem_timeout_s

    def codec(self, config: Config) -> Codec:
        audio = config.board_profile().audio
        rate, frames = config.audio.rate, config.audio.block_frames
        if audio.driver == "sim":
            near, far = self._sim_near, self._sim_far
            if near is None or far is None:
                near, far = _test_call(rate)
            return SimTap(SimCodec(near, far, rate=rate, block_frames=frames, clock=ManualClock(),
                                   queue_blocks=config.audio.queue_blocks),
                          swapped=self._swapped, line_out_connected=self._line_out_connected)
        return sound_device_codec(config)

    def pin_factory(self, config: Config) -> Any:
        """The simulated board's MockFactory, or None for gpiozero's default on a real board."""
        if self._pin_factory is None:
            self._pin_factory = board_pin_factory(config)
            self._own_factory = self._pin_factory is not None
        return self._pin_factory

    def panel(self, config: Config, on_event: Callable[[object], None] | None = None) -> Panel:
        return make_panel(config, self.pin_factory(config), on_event)

    def sim_modem(self) -> SimModem:
        if self._modem is None:
            self._modem, self._own_modem = SimModem(), True
        return self._modem

    def line(self, config: Config, clock: Clock, on_event: Callable[[object], None]) -> V253Line | None:
        """The voice modem, initialised; None when the board has none."""
        profile = config.board_profile().line
        if profile.driver == "none":
            return None
        port = self.sim_modem().path if profile.driver == "sim" else profile.port
        assert port is not None  # the profile schema requires it for v253
        return V253Line(port, clock=clock, on_event=on_event, baudrate=profile.baudrate,
                        command_timeout=self.modem_timeout_s)

    def close(self) -> None:
        """Close what this object made itself; safe to call twice."""
        if self._own_modem and self._modem is not None:
            self._modem.close()
            self._modem, self._own_modem = None, False
        if self._own_factory and self._pin_factory is not None:
            self._pin_factory.close()
            self._pin_factory, self._own_factory = None, False


def _disk_free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _ask_installer(step: HookStep) -> None:
    what = "Lift the handset now." if step == "lift" else "Now put the handset back on its cradle."
    print(f"linetap doctor: {what}", file=sys.stderr, flush=True)


def _say(text: str) -> None:
    print(f"linetap doctor: {text}", file=sys.stderr, flush=True)


@dataclass
class Context:
    """What every check is given. ``config_path=None`` means the defaults (simulated board).

    ``hook_test_s`` turns on the hook test (None: skipped); ``ask`` tells the
    installer what to do with the handset (on the thread running the checks);
    ``say`` announces a wait. ``disk_free`` measures free bytes at a path.
    """

    config_path: Path | None
    data_dir: Path
    clock: Clock
    parts: BoardParts = field(default_factory=BoardParts)
    listen_s: float = 3.0
    hook_test_s: float | None = None
    network_timeout_s: float = 5.0
    ask: Callable[[HookStep], None] = _ask_installer
    say: Callable[[str], None] = _say
    disk_free: Callable[[Path], int] = _disk_free
    _config: Config | None = field(default=None, init=False, repr=False)
    _config_error: ConfigError | None = field(default=None, init=False, repr=False)

    def config(self) -> Config | None:
        """The loaded config, loaded once; None if it does not load (see :attr:`config_error`)."""
        if self._config is None and self._config_error is None:
            try:
                self._config = load_config(self.config_path)
            except ConfigError as exc:
                self._config_error = exc
        return self._config

    @property
    def config_error(self) -> ConfigError | None:
        self.config()
        return self._config_error


def _no_config(name: str) -> CheckResult:
    return skipped(name, "needs a config that loads (see the config check)")


def _profile_ref(config: Config) -> str:
    board = config.device.board
    if "/" in board or board.endswith(".toml"):
        return f"the board profile {board}"
    return (f"the built-in board profile {board!r} (to change it, copy hardware/boards/{board}.toml "
            f"to a file and set device.board to its path, see hardware/README.md)")


def _config_ref(ctx: Context) -> str:
    return str(ctx.config_path) if ctx.config_path is not None else SERVICE_CONFIG


# ----------------------------------------------------------------- checks --

def check_config(ctx: Context) -> CheckResult:
    config = ctx.config()
    if config is None:
        return failed("config", str(ctx.config_error).splitlines()[0],
                      f"fix the file (every problem, one per line: `linetap config check "
                      f"{_config_ref(ctx)}`); the keys are described in linetap.example.toml",
                      error=str(ctx.config_error))
    profile = config.board_profile()
    details = {"config": None if ctx.config_path is None else str(ctx.config_path),
               "board": profile.name, "device_id": config.device.id, "data_dir": str(ctx.data_dir)}
    if ctx.config_path is None:
        return warned("config", f"no config file given: checked the defaults (board {profile.name})",
                      f"check the box as the service runs it: `linetap doctor --config {SERVICE_CONFIG}`",
                      **details)
    return passed("config", f"{ctx.config_path} loads: board {profile.name}, device id {config.device.id}",
                  **details)


def check_audio(ctx: Context) -> CheckResult:
    config = ctx.config()
    if config is None:
        return _no_config("audio")
    audio = config.board_profile().audio
    details: dict[str, Any] = {"driver": audio.driver, "device": audio.device, "rate": config.audio.rate,
                               "channels": audio.channels, "out_channels": audio.out_channels}
    try:
        codec = ctx.parts.codec(config)
    except DeviceMissing as exc:
        return failed("audio", f"audio device {audio.device!r} not found",
                      f"set audio.device in {_profile_ref(config)} to part of one of these names: "
                      f"{_audio_device_names()}; is the codec plugged in (`aplay -l`)?",
                      error=str(exc), **details)
    except (DeviceError, ConfigError) as exc:
        return failed("audio", str(exc), f"fix audio.* in {_profile_ref(config)}, or use a codec "
                                         f"that takes these rates and channel counts", **details)
    try:
        codec.start()
        block = codec.read(timeout=READ_TIMEOUT_S)
    except DeviceError as exc:
        return failed("audio", f"the audio device opens but does not stream: {exc}",
                      f"{STOP_SERVICE}; then check `fuser -v /dev/snd/*` and `dmesg`", **details)
    finally:
        codec.close()
    if block is None:
        return failed("audio", "the audio device delivered no audio", f"{STOP_SERVICE}; check `dmesg`",
                      **details)
    name = getattr(codec, "device_name", "simulated codec")
    device_rate = getattr(codec, "device_rate", config.audio.rate)
    details.update(device_name=name, device_rate=device_rate)
    return passed("audio", f"{name!r} streams {audio.channels} in / {audio.out_channels} out at "
                           f"{device_rate} Hz for the {config.audio.rate} Hz pipeline", **details)


def _audio_device_names() -> str:
    from linetap.drivers.audio import list_devices

    names = [d.name for d in list_devices()]
    return ", ".join(repr(n) for n in names) if names else "none at all (`linetap devices` lists them)"


def _capture(codec: Codec, seconds: float) -> np.ndarray:
    """At least ``seconds`` of (near, far) frames from a started codec."""
    wanted = round(seconds * codec.rate)
    chunks, got = [], 0
    while got < wanted:
        block = codec.read(timeout=READ_TIMEOUT_S)
        if block is None:
            raise DeviceLost(f"the audio stream ended after {got / codec.rate:.2f} s of the "
                             f"{seconds:.2f} s asked for")
        chunks.append(block.frames)
        got += len(block.frames)
    return np.concatenate(chunks)


@contextmanager
def _started(ctx: Context, config: Config) -> Iterator[Codec]:
    codec = ctx.parts.codec(config)
    try:
        codec.start()
        yield codec
    finally:
        codec.close()


def check_signal(ctx: Context) -> CheckResult:
    config = ctx.config()
    if config is None:
        return _no_config("signal")
    ctx.say(f"listening {ctx.listen_s:g} s to both sides: keep a test call going, both people talking")
    try:
        with _started(ctx, config) as codec:
            frames = _capture(codec, ctx.listen_s)
    except (DeviceError, ConfigError) as exc:
        return skipped("signal", f"the audio device does not work (see the audio check): {exc}")
    block = codec.block_frames
    whole = frames[: len(frames) // block * block]
    levels = np.array([rms_dbfs(chunk) for chunk in whole.reshape(-1, block, 2)])
    speech = np.percentile(levels, 90, axis=0)
    peaks, clips = peak_dbfs(frames), clip_count(frames)
    floor = config.calls.vad_min_level_dbfs
    details = {"seconds": round(len(frames) / codec.rate, 3), "silence_below_dbfs": floor}
    for index, side in enumerate(("near", "far")):
        details[side] = {"speech_dbfs": round(float(speech[index]), 1),
                         "peak_dbfs": round(float(peaks[index]), 1), "clipped": int(clips[index])}
    summary = f"near {speech[0]:.0f} dBFS, far {speech[1]:.0f} dBFS (speech level over {ctx.listen_s:g} s)"
    silent = [side for index, side in enumerate(("near", "far")) if speech[index] < floor]
    if len(silent) == 2:
        return failed("signal", f"no signal on either channel: {summary}",
                      "make a test call while doctor listens; if one is going, the codec's line in is "
                      "not connected to the tap (T1/T2 secondaries to line in L/R, hardware/wiring.md)",
                      **details)
    if silent == ["far"]:
        return failed("signal", f"no signal on far channel: tap not connected? {summary}",
                      "connect the earpiece-pair tap (C2, R2, T2) to line in R; check the handset-cord "
                      "breakout's earpiece pins (hardware/wiring.md)", **details)
    if silent == ["near"]:
        return failed("signal", f"no signal on near channel: tap not connected? {summary}",
                      "connect the mic-pair tap (C1, R1, T1) to line in L; the mic pair is 20-30 dB "
                      "quieter, so also check the capture gain (`alsamixer`) (hardware/wiring.md)",
                      **details)
    hot = [side for index, side in enumerate(("near", "far")) if clips[index]]
    if hot:
        return warned("signal", f"{' and '.join(hot)} clips (samples at full scale): {summary}",
                      "lower the level: a larger load R3 across T2 for far, the capture gain in "
                      "`alsamixer` for both; aim for speech peaks near -12 dBFS", **details)
    quiet = [side for index, side in enumerate(("near", "far")) if peaks[index] < QUIET_PEAK_DBFS]
    if quiet:
        return warned("signal", f"{' and '.join(quiet)} is quiet (peaks below {QUIET_PEAK_DBFS:g} dBFS): "
                                f"{summary}",
                      "raise the level: the capture gain in `alsamixer` (then `alsactl store`), or a "
                      "lower R1 for near (not below 2.2 kOhm); aim for speech peaks near -12 dBFS",
                      **details)
    return passed("signal", summary, **details)


def _tone_dbfs(frames: np.ndarray, freq: float, rate: int) -> np.ndarray:
    """The level of one frequency in each column, in dBFS of a full-scale sine."""
    ref = np.exp(-2j * np.pi * freq * np.arange(len(frames)) / rate)
    amplitude = 2 * np.abs(ref @ frames.astype(np.float64)) / len(frames)
    return 20 * np.log10(np.maximum(amplitude, 1e-3) / 32767)


def check_channels(ctx: Context) -> CheckResult:
    config = ctx.config()
    if config is None:
        return _no_config("channels")
    audio = config.board_profile().audio
    test_tone = tone(TEST_TONE_HZ, TEST_TONE_S, config.audio.rate, config.consent.warning_level_dbfs)
    try:
        with _started(ctx, config) as codec:
            before = _capture(codec, TONE_WINDOW_S)
            codec.play(test_tone)
            after = _capture(codec, TONE_WINDOW_S)
    except (DeviceError, ConfigError) as exc:
        return skipped("channels", f"the audio device does not work (see the audio check): {exc}")
    base = _tone_dbfs(before, TEST_TONE_HZ, codec.rate)
    heard = _tone_dbfs(after, TEST_TONE_HZ, codec.rate)
    rise = heard - base
    details = {"tone_hz": TEST_TONE_HZ, "line_out": list(audio.line_out),
               "near": {"before_dbfs": round(float(base[0]), 1), "after_dbfs": round(float(heard[0]), 1)},
               "far": {"before_dbfs": round(float(base[1]), 1), "after_dbfs": round(float(heard[1]), 1)}}
    on_near, on_far = rise >= HEARD_ABOVE_BASELINE_DB
    outputs = ", ".join(str(c) for c in audio.line_out)
    if not (on_near or on_far):
        return failed("channels", f"the test tone played on line out {outputs} came back on neither input: "
                                  f"the announcement does not reach the call",
                      f"wire line out (channel {outputs}) through R4/R6, T3, C3 and R5 onto the mic pair "
                      f"(hardware/wiring.md), or fix audio.line_out in {_profile_ref(config)}", **details)
    if heard[1] - heard[0] >= SWAP_MARGIN_DB and on_far:
        return failed("channels", f"near and far look swapped: the test tone injected into the mic pair is "
                                  f"{heard[1] - heard[0]:.0f} dB louder on far (capture channel {audio.far}) "
                                  f"than on near (channel {audio.near})",
                      f"swap the line-in L and R wires at the codec, or exchange audio.near and audio.far in "
                      f"{_profile_ref(config)}", **details)
    if heard[0] - heard[1] >= SWAP_MARGIN_DB:
        return passed("channels", f"test tone back on near {heard[0] - heard[1]:.0f} dB above far: "
                                  f"near and far as wired, announcement reaches the mic pair", **details)
    return warned("channels", f"the test tone is about as loud on near as on far "
                              f"({heard[0]:.0f} / {heard[1]:.0f} dBFS): cannot tell whether they are swapped",
                  "check that T1 taps the mic pair and T2 the earpiece pair (not both on one pair), and "
                  "that the two transformers' wires are not bundled together (hardware/wiring.md)", **details)


def _gpio_roles(config: Config) -> dict[str, str]:
    return {path: f"GPIO{pin} (header pin {HEADER_PIN[pin]})"
            for path, pin in config.board_profile().gpio.assigned().items()}


def check_gpio(ctx: Context) -> CheckResult:
    config = ctx.config()
    if config is None:
        return _no_config("gpio")
    roles = _gpio_roles(config)
    try:
        with ctx.parts.panel(config) as panel:
            off_hook = panel.off_hook
    except (DeviceError, ConfigError) as exc:
        return failed("gpio", str(exc).split("; ")[0],
                      f"{STOP_SERVICE}; otherwise another program holds the pin (`gpioinfo` shows who), "
                      f"or give the role another free GPIO in {_profile_ref(config)} "
                      f"(hardware/pinouts.md)", error=str(exc), pins=roles)
    except GPIOZeroError as exc:
        return failed("gpio", f"gpiozero cannot claim the panel's pins: {exc}",
                      f"{STOP_SERVICE}; check that this user is in group gpio (`id`) and that "
                      f"/dev/gpiochip* exists", pins=roles)
    hook = "no hook input" if off_hook is None else f"hook reads {'off' if off_hook else 'on'} hook"
    return passed("gpio", f"{len(roles)} pins claimed and released; {hook}", pins=roles, off_hook=off_hook)


class _HookWatch:
    """Collects hook changes from a driver thread for the thread running the checks."""

    def __init__(self, source: str) -> None:
        self._source = source
        self._changed = threading.Condition()
        self._states: list[bool] = []

    def on_event(self, event: object) -> None:
        """Called on the panel's debounce thread or the modem's reader thread."""
        if isinstance(event, HookChanged) and event.source == self._source:
            with self._changed:
                self._states.append(event.off_hook)
                self._changed.notify_all()

    def wait_for(self, off_hook: bool, deadline: float, clock: Callable[[], float]) -> bool:
        with self._changed:
            while True:
                if off_hook in self._states:
                    del self._states[: self._states.index(off_hook) + 1]
                    return True
                left = deadline - clock()
                if left <= 0:
                    return False
                self._changed.wait(left)


def check_hook(ctx: Context) -> CheckResult:
    config = ctx.config()
    if config is None:
        return _no_config("hook")
    profile = config.board_profile()
    source = profile.call_detect.source
    if source == "vad":
        return skipped("hook", "this board has no hook signal (call_detect.source = \"vad\"): calls start "
                               "on voice activity; make a test call to see one start")
    if ctx.hook_test_s is None:
        return skipped("hook", "not asked for: run `linetap doctor --hook-test` and lift and replace "
                               "the handset when told")
    watch = _HookWatch("gpio" if source == "hook-gpio" else "modem")
    where = (f"GPIO{profile.gpio.hook} (header pin {HEADER_PIN[profile.gpio.hook]})"
             if profile.gpio.hook is not None and source == "hook-gpio" else "the voice modem")
    try:
        device = (ctx.parts.panel(config, watch.on_event) if source == "hook-gpio"
                  else ctx.parts.line(config, ctx.clock, watch.on_event))
    except (DeviceError, ConfigError) as exc:
        return skipped("hook", f"the hook input cannot be opened (see the gpio or modem check): {exc}")
    assert device is not None  # the profile schema requires a modem for call_detect v253
    deadline = time.monotonic() + ctx.hook_test_s
    seen: list[str] = []
    with device:
        for step, off_hook in (("lift", True), ("replace", False)):
            ctx.ask(step)
            if not watch.wait_for(off_hook, deadline, time.monotonic):
                break
            seen.append("off hook" if off_hook else "on hook")
    details = {"source": source, "input": where, "seen": seen, "seconds": ctx.hook_test_s}
    if len(seen) == 2:
        return passed("hook", f"{where} saw the handset lifted and put back", **details)
    missing = "lifted" if not seen else "put back"
    if source == "hook-gpio":
        polarity = "high" if profile.gpio.hook_active == "low" else "low"
        fix = (f"check the optocoupler: collector to {where}, emitter to GND, its input across the mic "
               f"pair (or the line loop) per hardware/wiring.md; if it changes the wrong way, set "
               f"gpio.hook_active = \"{polarity}\" in {_profile_ref(config)}")
    else:
        fix = ("this modem may not report the local handset: try line_select (AT+VLS=0), or use a "
               "hook-gpio board with an optocoupler (hardware/wiring.md)")
    return failed("hook", f"the handset was not seen {missing} within {ctx.hook_test_s:g} s on {where}",
                  fix, **details)


def check_modem(ctx: Context) -> CheckResult:
    config = ctx.config()
    if config is None:
        return _no_config("modem")
    line_profile = config.board_profile().line
    if line_profile.driver == "none":
        return skipped("modem", "this board has no voice modem (line.driver = \"none\")")
    try:
        line = ctx.parts.line(config, ctx.clock, lambda event: None)
    except DeviceMissing as exc:
        return failed("modem", str(exc).split("; ")[0],
                      f"plug the modem in and set line.port in {_profile_ref(config)} to its "
                      f"/dev/serial/by-id/... path (serial ports here: `linetap devices`)", error=str(exc))
    except LinetapError as exc:
        return failed("modem", f"the modem did not initialise: {exc}",
                      f"{STOP_SERVICE}; check that ModemManager is not running (`systemctl status "
                      f"ModemManager`) and that the modem is a V.253 voice modem", error=str(exc))
    assert line is not None
    with line:
        identity, caller_id = line.identity, line.caller_id_command
    details = {"port": line.port, "identity": identity, "caller_id_command": caller_id}
    if caller_id is None:
        return warned("modem", f"modem {identity!r} answers but took none of {', '.join(CALLER_ID_COMMANDS)}: "
                               f"no caller ID",
                      "use a modem whose chipset supports formatted caller ID (Conexant, Agere, US "
                      "Robotics, Rockwell), and set the ATA and the modem to the same country", **details)
    return passed("modem", f"modem {identity!r} answers ATI; caller ID on with {caller_id}", **details)


def check_keys(ctx: Context) -> CheckResult:
    try:
        public = keys.load_signing_key(ctx.data_dir).public_key()
        keys.load_recipient(ctx.data_dir)
    except keys.KeyMissing as exc:
        return failed("keys", str(exc).split(":")[0],
                      f"run `linetap keys init --data-dir {ctx.data_dir} --central-recipient age1...` with "
                      f"the central store's recipient (first-boot provisioning does this from "
                      f"central.recipient on the boot partition)", error=str(exc))
    except ConfigError as exc:  # KeyPermissions and unreadable key files
        return failed("keys", str(exc).split(";")[0], str(exc).split("; ", 1)[-1], error=str(exc))
    fingerprint = keys.fingerprint(public)
    return passed("keys", f"device signing key present (mode 0600, fingerprint {fingerprint}); central "
                          f"recipient present", fingerprint=fingerprint)


def _in_data_dir(data_dir: Path, name: str) -> Path:
    path = Path(name)
    return path if path.is_absolute() else data_dir / path


def _client_certificate(ctx: Context, config: Config, cert_path: Path) -> CheckResult | None:
    """A failure or warning about the box's own certificate, or None when it is good."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except ValueError as exc:
        return failed("broker", f"{cert_path} is not a PEM certificate ({exc})",
                      f"copy the box's client certificate (PEM) to {cert_path}")
    names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    device_id = config.device.id
    if names != [device_id]:
        return failed("broker", f"client certificate CN {', '.join(map(str, names)) or '(none)'} is not the "
                                f"device id {device_id!r}: the broker would put this box in another's topics",
                      f"issue {cert_path} with CN = {device_id}, or set device.id in {_config_ref(ctx)} to "
                      f"the certificate's CN")
    now = datetime.datetime.fromtimestamp(ctx.clock.wall(), datetime.UTC)
    until = cert.not_valid_after_utc
    clock_note = "" if ctx.clock.synced() else " (the clock is not synchronised: fix that first)"
    if now < cert.not_valid_before_utc:
        return failed("broker", f"client certificate is not valid before {cert.not_valid_before_utc:%Y-%m-%d}"
                                f"{clock_note}", f"issue a certificate valid now for {device_id}")
    if now > until:
        return failed("broker", f"client certificate expired on {until:%Y-%m-%d}{clock_note}",
                      f"issue a new certificate for {device_id} and copy it to {cert_path}")
    if until - now < datetime.timedelta(days=CERT_RENEW_DAYS):
        return warned("broker", f"client certificate expires on {until:%Y-%m-%d}",
                      f"issue a new certificate for {device_id} before then and copy it to {cert_path}",
                      expires=until.isoformat())
    return None


def check_broker(ctx: Context) -> CheckResult:
    config = ctx.config()
    if config is None:
        return _no_config("broker")
    sync = config.sync
    if not sync.broker:
        return skipped("broker", "no broker configured (sync.broker is empty): recordings stay on the box")
    where = f"{sync.broker}:{sync.port}"
    details: dict[str, Any] = {"broker": where, "tls": sync.tls}
    context: ssl.SSLContext | None = None
    certificate: CheckResult | None = None
    if sync.tls:
        files = {key: _in_data_dir(ctx.data_dir, getattr(sync, key)) for key in ("ca_file", "cert_file", "key_file")}
        missing = [f"sync.{key} = {path}" for key, path in files.items() if not path.is_file()]
        if missing:
            return failed("broker", f"TLS file(s) missing: {'; '.join(missing)}",
                          f"copy the fleet CA to {files['ca_file']}, this box's certificate (CN = "
                          f"{config.device.id}) to {files['cert_file']} and its key to {files['key_file']} "
                          f"(chmod 600)", **details)
        for key, check in (("cert_file", keys.check_tls_certificate),
                           ("key_file", lambda path: keys.check_tls_key(path, ctx.data_dir))):
            try:
                check(files[key])
            except keys.WrongKeyKind as exc:
                return failed("broker", f"sync.{key}: {exc.finding}", exc.fix, **details)
        certificate = _client_certificate(ctx, config, files["cert_file"])
        if certificate is not None and certificate.status == "fail":
            return CheckResult("broker", "fail", certificate.finding, certificate.fix, details)
        try:
            context = ssl.create_default_context(cafile=str(files["ca_file"]))
            context.load_cert_chain(str(files["cert_file"]), str(files["key_file"]))
        except ssl.SSLError as exc:
            return failed("broker", f"the TLS files do not load: {exc.reason or exc}",
                          f"check that {files['ca_file']} is the CA's PEM and that {files['key_file']} is "
                          f"the key of {files['cert_file']}", **details)
        if stat.S_IMODE(files["key_file"].stat().st_mode) & 0o077:
            certificate = certificate or warned(
                "broker", f"the client key {files['key_file']} is readable by others",
                f"chmod 600 {files['key_file']}")
    try:
        with socket.create_connection((sync.broker, sync.port), timeout=ctx.network_timeout_s) as raw:
            if context is None:
                return passed("broker", f"{where} reachable (plain TCP, loopback only)", **details)
            with context.wrap_socket(raw, server_hostname=sync.broker) as tls:
                details.update(tls_version=tls.version(), server=dict(x[0] for x in tls.getpeercert()["subject"]))
    except ssl.SSLCertVerificationError as exc:
        return failed("broker", f"the broker's certificate is not accepted: {exc.verify_message}",
                      f"sync.ca_file must be the CA that signed the broker's certificate, and sync.broker "
                      f"a name that certificate is issued for", **details)
    except ssl.SSLError as exc:
        return failed("broker", f"TLS handshake with {where} failed: {exc.reason or exc}",
                      "check that the broker speaks TLS on this port and accepts this box's certificate "
                      "(its CA must be the broker's cafile)", **details)
    except OSError as exc:
        return failed("broker", f"cannot reach {where}: {exc.strerror or exc}",
                      f"check sync.broker and sync.port in {_config_ref(ctx)}, the network and firewalls "
                      f"(`nc -vz {sync.broker} {sync.port}`)", **details)
    if certificate is not None:
        return CheckResult("broker", "warn", certificate.finding, certificate.fix,
                           {**details, **certificate.details})
    return passed("broker", f"TLS to {where} ({details['tls_version']}) with client certificate CN "
                            f"{config.device.id}", **details)


def check_clock(ctx: Context) -> CheckResult:
    now = datetime.datetime.fromtimestamp(ctx.clock.wall(), datetime.UTC)
    details = {"wall": now.isoformat(timespec="seconds")}
    if ctx.clock.synced():
        return passed("clock", f"synchronised ({now:%Y-%m-%d %H:%M:%S} UTC)", **details)
    return warned("clock", f"not synchronised ({now:%Y-%m-%d %H:%M:%S} UTC as the box believes): recordings "
                           f"are stamped as provisional",
                  "give the box network access to an NTP server (UDP port 123); `timedatectl "
                  "timesync-status` shows what systemd-timesyncd tried; a local server goes in NTP= of "
                  "/etc/systemd/timesyncd.conf", **details)


def check_disk(ctx: Context) -> CheckResult:
    config = ctx.config()
    if config is None:
        return _no_config("disk")
    if not ctx.data_dir.is_dir():
        return failed("disk", f"the data directory {ctx.data_dir} does not exist",
                      f"mount the data partition (LTDATA) at {ctx.data_dir} and run provisioning, or give "
                      f"--data-dir")
    free = ctx.disk_free(ctx.data_dir)
    floor = config.spool.min_free_mb * 1024 * 1024
    details = {"free_mb": free // (1024 * 1024), "min_free_mb": config.spool.min_free_mb}
    if free < floor:
        return failed("disk", f"{free // 2**20} MB free under {ctx.data_dir}, below spool.min_free_mb = "
                              f"{config.spool.min_free_mb}: new calls are refused",
                      "free space (let sync deliver, `linetap spool list` shows what waits), use a larger "
                      "card, or lower spool.min_free_mb", **details)
    if free < 2 * floor:
        return warned("disk", f"{free // 2**20} MB free, less than twice spool.min_free_mb = "
                              f"{config.spool.min_free_mb}",
                      "check that sync is delivering (recordings leave the box after keep_synced_days) "
                      "or use a larger card", **details)
    return passed("disk", f"{free // 2**20} MB free under {ctx.data_dir} (spool.min_free_mb = "
                          f"{config.spool.min_free_mb})", **details)


def check_spool(ctx: Context) -> CheckResult:
    config = ctx.config()
    if config is None:
        return _no_config("spool")
    try:
        rows = spool.list_recordings(ctx.data_dir)
    except sqlite3.DatabaseError as exc:
        return failed("spool", f"the catalogue {ctx.data_dir / spool.SPOOL_DIR / spool.CATALOGUE} is "
                               f"unreadable ({exc})",
                      "restart the service: recovery quarantines it and rebuilds it from the recordings")
    by_state: dict[str, int] = {}
    for row in rows:
        by_state[row["state"]] = by_state.get(row["state"], 0) + 1
    quarantine = ctx.data_dir / spool.QUARANTINE_DIR
    quarantined = sorted(p.name for p in quarantine.iterdir()) if quarantine.is_dir() else []
    details: dict[str, Any] = {"recordings": by_state, "quarantined": quarantined}
    used = sum(r["bytes"] for r in rows if r["state"] in ("recording", "closed", "synced"))
    limit = config.spool.max_bytes
    if (limit and used > limit and "synced" not in by_state
            and config.spool.on_full == "stop-and-alarm"):
        return failed("spool", f"the spool holds {used} bytes of unsynced recordings, over spool.max_bytes "
                               f"= {limit}: new calls are refused",
                      "let sync deliver (check the broker), raise spool.max_bytes, or set spool.on_full = "
                      "\"overwrite-oldest\"", **details)
    try:
        report = spool.verify_spool(ctx.data_dir)
    except ConfigError as exc:
        return skipped("spool", f"not verified without the device key (see the keys check): "
                                f"{str(exc).split(':')[0]}", **details)
    problems = report["problems"] + [{"kind": "chain", "detail": p} for p in report["chain"].get("problems", [])]
    details["problems"] = len(problems)
    summary = f"{report['recordings']} recordings, {report['manifests']} signed manifests"
    if problems:
        first = problems[0]
        return failed("spool", f"{summary}; {len(problems)} problem(s), first: {first['kind']}: {first['detail']}",
                      "`linetap spool verify` lists them all; restart the service so that recovery "
                      "quarantines what does not add up; if it recurs, replace the SD card", **details)
    if quarantined:
        return warned("spool", f"{summary}; recovery quarantined {len(quarantined)} item(s): "
                               f"{', '.join(quarantined[:3])}{', ...' if len(quarantined) > 3 else ''}",
                      f"read them in {quarantine}, then delete them; repeated power-cut findings "
                      f"(temp files, calls closed after a crash) point at the power supply, damage at the card",
                      **details)
    return passed("spool", f"{summary}, all verified", **details)


CHECKS: tuple[tuple[str, Callable[[Context], CheckResult]], ...] = (
    ("config", check_config),
    ("audio", check_audio),
    ("signal", check_signal),
    ("channels", check_channels),
    ("gpio", check_gpio),
    ("hook", check_hook),
    ("modem", check_modem),
    ("keys", check_keys),
    ("broker", check_broker),
    ("clock", check_clock),
    ("disk", check_disk),
    ("spool", check_spool),
)
"""Every check, in the order an installer fixes things."""


def run_checks(ctx: Context, names: Iterable[str] | None = None) -> list[CheckResult]:
    """Run the checks named (all by default) in table order; one result each."""
    wanted = set(names) if names is not None else None
    results = []
    for name, check in CHECKS:
        if wanted is not None and name not in wanted:
            continue
        try:
            result = check(ctx)
        except LinetapError as exc:
            # A check turns the failures it expects into findings; this is the rest, still reported.
            result = failed(name, f"{type(exc).__name__}: {exc}", "see the finding")
        logger.info("doctor check=%s status=%s", name, result.status)
        results.append(result)
    return results


# ----------------------------------------------------------------- output --

MARKS: dict[Status, str] = {"pass": "[ ok ]", "warn": "[warn]", "fail": "[FAIL]", "skip": "[skip]"}


def checklist(results: list[CheckResult]) -> str:
    """One line per check with its mark; the fix indented under a warning or failure."""
    width = max(len(r.name) for r in results)
    lines = []
    for r in results:
        lines.append(f"{MARKS[r.status]} {r.name:<{width}}  {r.finding}")
        if r.fix:
            lines.append(f"{'':>{len(MARKS['pass']) + width + 3}}fix: {r.fix}")
    counts = {status: sum(r.status == status for r in results) for status in MARKS}
    lines.append(f"{len(results)} checks: {counts['pass']} passed, {counts['warn']} warnings, "
                 f"{counts['fail']} failed, {counts['skip']} skipped")
    return "\n".join(lines)


def exit_code(results: list[CheckResult]) -> int:
    """0 when nothing failed (a warning is not a failure), else 1."""
    return 1 if any(r.status == "fail" for r in results) else 0


def main(config_path: Path | str | None, data_dir: Path, clock: Clock, *, as_json: bool,
         listen_s: float = 3.0, hook_test_s: float | None = None) -> int:
    """``linetap doctor``: run every check, print the checklist or JSON, return the exit code."""
    if not 0 < listen_s <= 60:
        raise ConfigError(f"--listen {listen_s:g} s: give 0 to 60 seconds, e.g. 3")
    if hook_test_s is not None and not 0 < hook_test_s <= 600:
        raise ConfigError(f"--hook-test {hook_test_s:g} s: give 0 to 600 seconds, e.g. 30")
    parts = BoardParts()
    ctx = Context(None if config_path is None else Path(config_path), Path(data_dir), clock, parts,
                  listen_s=listen_s, hook_test_s=hook_test_s)
    try:
        results = run_checks(ctx)
    finally:
        parts.close()
    if as_json:
        print(json.dumps([asdict(r) for r in results], indent=2))
    else:
        print(checklist(results))
    return exit_code(results)
