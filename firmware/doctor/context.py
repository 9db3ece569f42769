"""What every check is given: the config, the data dir, the clock and the devices, built one at a time."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

import numpy as np

from linetap.drivers.audio import Block, Codec, CodecStats, SimCodec
from linetap.drivers.gpio import Panel
from linetap.drivers.line import SimModem, V253Line
from linetap.firmware.board import USB_BRIDGES
from linetap.firmware.clock import Clock, ManualClock, SystemClock
from linetap.firmware.config import Config, load_config
from linetap.firmware.devices import (SimUsb, board_pin_factory, bridge_codec, make_hid, make_line, make_panel,
                                      sim_bridge, sim_codec, sound_device_codec)
from linetap.firmware.doctor.report import CheckResult, skipped
from linetap.firmware.errors import ConfigError, DeviceError
from linetap.firmware.scripted import bundled_speech

HookStep = Literal["lift", "replace"]

SERVICE_CONFIG = "/etc/linetap/linetap.toml"
STOP_SERVICE = "stop the service first (`sudo systemctl stop linetap`), it holds the devices"
READ_TIMEOUT_S = 2.0


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
                 modem_timeout_s: float = 2.0, usb: SimUsb | None = None) -> None:
        self._usb, self._own_usb = usb, False
        self._clock = SystemClock()
        self._stop = threading.Event()
        self._pin_factory = pin_factory
        self._modem = modem
        self._own_factory = False
        self._own_modem = False
        self._sim_near, self._sim_far = sim_near, sim_far
        self._swapped, self._line_out_connected = swapped, line_out_connected
        self.modem_timeout_s = modem_timeout_s

    def codec(self, config: Config) -> Codec:
        driver = config.board_profile().audio.driver
        if driver == "sim-usb-bridge":  # a fresh one each time: a bridge starts once
            return sim_bridge(config, ManualClock(), *_test_call(config.audio.rate))
        if driver in USB_BRIDGES:
            return bridge_codec(config, self._clock, None)
        if driver == "sim":
            near, far = self._sim_near, self._sim_far
            if near is None or far is None:
                near, far = _test_call(config.audio.rate)
            return SimTap(sim_codec(config, ManualClock(), near, far),
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
        return make_line(config, port, clock, on_event, command_timeout=self.modem_timeout_s)

    def sim_usb(self, config: Config) -> SimUsb:
        """The simulated headset and PC of the simulated USB inline board (``usb`` if given)."""
        if self._usb is None:
            self._usb, self._own_usb = SimUsb(config, ManualClock(), *_test_call(config.audio.rate)), True
        return self._usb

    def hid(self, config: Config, on_event: Callable[[object], None]) -> Any:
        """The headset's HID telephony controls and our gadget's HID function, forwarding."""
        usb = self.sim_usb(config) if config.board_profile().hid.driver == "sim" else None
        return make_hid(config, self._clock, on_event, usb)

    def find_headset(self, hidraw_class: Path) -> str:
        """The hidraw node of the headset with telephony controls under ``hidraw_class``."""
        from linetap.drivers.hid.hidraw import find_headset

        return find_headset(hidraw_class)

    def watch_hid(self, hid: Any, seconds: float) -> dict[str, Any]:
        """The HID driver's counters once a headset report came, or after ``seconds``."""
        deadline = time.monotonic() + seconds
        stats = hid.stats()
        while stats["headset"]["reports"] == 0 and time.monotonic() < deadline:
            self._stop.wait(0.05)  # poll the driver's counters; nothing else wakes this thread
            stats = hid.stats()
        return stats

    def close(self) -> None:
        """Close what this object made itself; safe to call twice."""
        if self._own_usb and self._usb is not None:
            self._usb.close()
            self._usb, self._own_usb = None, False
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


def _audio_names() -> list[str]:
    from linetap.drivers.audio import list_devices

    try:
        return [d.name for d in list_devices()]
    except DeviceError:
        return []


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
    root: Path = Path("/")  # where /sys (sysfs, configfs) is: a fake folder in tests
    audio_names: Callable[[], list[str]] = _audio_names  # the sound devices' names, as `linetap devices`
    memo: dict[str, Any] = field(default_factory=dict)  # what one check measured for another
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


def no_config(name: str) -> CheckResult:
    return skipped(name, "needs a config that loads (see the config check)")


def profile_ref(config: Config) -> str:
    board = config.device.board
    if "/" in board or board.endswith(".toml"):
        return f"the board profile {board}"
    return (f"the built-in board profile {board!r} (to change it, copy hardware/boards/{board}.toml "
            f"to a file and set device.board to its path, see hardware/README.md)")


def config_ref(ctx: Context) -> str:
    return str(ctx.config_path) if ctx.config_path is not None else SERVICE_CONFIG
