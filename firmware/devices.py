"""The box's devices, built in one place from the board profile.

The service, replay, the demo and ``linetap doctor`` all build their codec,
front panel and line interface here, so the choice between a real and a
simulated driver is made once and logged. A device the profile names but
the machine lacks is an error, never a switch to the simulation.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from linetap.drivers.audio import Codec, SampleSource, Silence, SimCodec, SoundDeviceCodec
from linetap.drivers.gpio import Panel, sim_pin_factory
from linetap.drivers.line import SimModem, V253Line
from linetap.drivers.simcontrol import CONTROL_ENV, SimControl
from linetap.firmware.board import USB_BRIDGES, BoardProfile
from linetap.firmware.clock import Clock
from linetap.firmware.config import Config
from linetap.firmware.errors import ConfigError, DeviceError
from linetap.firmware.usbgadget import GadgetSpec, gadget_down, gadget_up

logger = logging.getLogger(__name__)

Samples = np.ndarray | SampleSource


@dataclass
class Board:
    """The drivers a board profile names, built and owned together."""

    profile: BoardProfile
    codec: Codec
    panel: Panel | None = None  # None only while the board is being built
    line: V253Line | None = None
    pin_factory: Any = None  # gpiozero's MockFactory on the simulated board
    modem: SimModem | None = None  # the simulated modem on the simulated board
    hid: Any = None  # the headset's HID telephony controls (HidTelephony) on a USB inline board
    usb: SimUsb | None = None  # the simulated headset and PC on the simulated USB inline board
    control: Any = None  # the simulated board's control socket (drivers/simcontrol.py), when asked for

    def close(self) -> None:
        for part in (self.control, self.line, self.modem, self.hid, self.panel, self.codec, self.usb):
            if part is not None:
                part.close()
        if self.pin_factory is not None:
            self.pin_factory.close()


def build_board(config: Config, clock: Clock, on_event: Callable[[object], None], *,
                near: Samples | None = None, far: Samples | None = None,
                keep_played: bool = True, live: bool = False) -> Board:
    """Build the codec, panel and line interface of ``config``'s board.

    ``near``/``far`` feed a simulated codec (arrays, or sources streamed as
    the call runs); ``keep_played=False`` spares it keeping the line signal.
    ``live`` is the service's board: a simulated line given no audio is
    silence for as long as the service runs (not one block), and the control
    socket :data:`~linetap.drivers.simcontrol.CONTROL_ENV` names is opened.
    A real board ignores them.
    """
    profile = config.board_profile()
    usb = SimUsb(config, clock, near, far) if profile.audio.driver == "sim-usb-bridge" else None
    if profile.audio.driver == "sim":
        if live:
            near, far = (Silence() if near is None else near), (Silence() if far is None else far)
        codec: Codec = sim_codec(config, clock, near, far, keep_played=keep_played and not live)
    elif profile.audio.driver in USB_BRIDGES:
        codec = bridge_codec(config, clock, usb)
    else:
        codec = sound_device_codec(config)
    board = Board(profile=profile, codec=codec, usb=usb)
    try:
        if profile.hid.driver != "none":
            board.hid = make_hid(config, clock, on_event, usb)
        board.pin_factory = board_pin_factory(config)
        board.panel = make_panel(config, board.pin_factory, on_event)
        if profile.line.driver == "sim":
            board.modem = SimModem()
            board.line = make_line(config, board.modem.path, clock, on_event)
        elif profile.line.driver == "v253":
            assert profile.line.port is not None
            board.line = make_line(config, profile.line.port, clock, on_event)
        if live and os.environ.get(CONTROL_ENV):
            board.control = sim_control(config, board, os.environ[CONTROL_ENV])
    except BaseException:
        board.close()
        raise
    logger.info("board ready name=%s audio=%s gpio=%s line=%s hid=%s call_detect=%s", profile.name,
                profile.audio.driver, profile.gpio.pin_factory, profile.line.driver, profile.hid.driver,
                profile.call_detect.source)
    return board


def sim_codec(config: Config, clock: Clock, near: Samples | None = None, far: Samples | None = None, *,
              keep_played: bool = True) -> SimCodec:
    """The simulated codec at the config's rate and block size; a side not given is silence."""
    silence = np.zeros(config.audio.block_frames, np.int16)
    return SimCodec(near if near is not None else silence, far if far is not None else silence,
                    rate=config.audio.rate, block_frames=config.audio.block_frames, clock=clock,
                    queue_blocks=config.audio.queue_blocks, keep_played=keep_played)


def sim_control(config: Config, board: Board, path: str) -> SimControl | None:
    """The control socket at ``path`` that lifts and puts down the simulated handset (simulation only).

    On a board without mock pins, or a path that cannot be used, the setting is ignored with a warning.
    """
    gpio = config.board_profile().gpio
    if board.pin_factory is None or gpio.hook is None:
        logger.warning("%s is set but board %s has no simulated hook: ignored", CONTROL_ENV, config.device.board)
        return None
    pin = board.pin_factory.pin(gpio.hook)
    lifted = pin.drive_high if gpio.hook_active == "high" else pin.drive_low
    down = pin.drive_low if gpio.hook_active == "high" else pin.drive_high
    try:
        return SimControl(Path(path), {"hook-off": lifted, "hook-on": down})
    except (OSError, ValueError) as exc:
        logger.warning("simulated board control socket not opened: %s", exc)
        return None


def sound_device_codec(config: Config) -> SoundDeviceCodec:
    """The real codec the board profile names, opened by name."""
    audio = config.board_profile().audio
    assert audio.device is not None  # the profile schema requires it for sounddevice
    return SoundDeviceCodec(audio.device, rate=config.audio.rate, block_frames=config.audio.block_frames,
                            channels=audio.channels, near=audio.near, far=audio.far,
                            out_channels=audio.out_channels, line_out=tuple(audio.line_out),
                            queue_blocks=config.audio.queue_blocks, native_rate=audio.native_rate)


class SimUsb:
    """The simulated USB inline board's far ends: a headset (HID controls, mic, speaker) and a PC.

    ``nodes`` stands in for ``/dev`` (the HID driver opens the headset's and
    the gadget's nodes there), ``headset`` presses the headset's buttons,
    ``host`` sets the softphone's LEDs. ``bridge`` is the audio bridge between
    a simulated headset whose mic says ``near`` (the agent) and a simulated PC
    that plays ``far`` (the caller), their clocks 300 ppm off nominal each way;
    ``bridge.rig.host.received`` is what the PC got: the agent and the consent audio.
    """

    HEADSET_NODE = "/dev/hidraw0"
    DRIFT_PPM = 300.0

    def __init__(self, config: Config, clock: Clock, near: Samples | None, far: Samples | None) -> None:
        from linetap.drivers.hid.sim import SimHeadset, SimHidNodes, SimHost

        self.bridge = sim_bridge(config, clock, near, far)
        self.nodes = SimHidNodes()
        self.headset = SimHeadset(self.nodes, self.HEADSET_NODE)
        self.host = SimHost(self.nodes, config.board_profile().hid.gadget)

    def close(self) -> None:
        for end in (self.headset, self.host, self.bridge):
            end.close()


def sim_bridge(config: Config, clock: Clock, near: Samples | None, far: Samples | None) -> Any:
    """The bridge between a simulated headset saying ``near`` and a simulated PC playing ``far``.

    Both ends run at the pipeline rate, their clocks :data:`SimUsb.DRIFT_PPM` off nominal each way;
    the PC keeps what it receives (``bridge.rig.host.received``).
    """
    from linetap.drivers.usbbridge import GADGET_RATES, BridgeSettings, SimEndpoint, SimUsbBridge

    rate, drift = config.audio.rate, SimUsb.DRIFT_PPM
    if rate not in GADGET_RATES:
        raise ConfigError(f"audio.rate = {rate}: the simulated USB inline board runs its PC at the "
                          f"pipeline rate, one of {', '.join(map(str, GADGET_RATES))}; set audio.rate")
    settings = BridgeSettings(rate=rate, block_frames=config.audio.block_frames, headset_rate=rate,
                              gadget_rate=rate)
    ends = _Ends()
    headset = SimEndpoint("headset", rate=rate, block=settings.headset_block, signal=ends.signal(near),
                          ppm=drift, keep=False)
    host = SimEndpoint("host", rate=rate, block=settings.gadget_block, signal=ends.signal(far), ppm=-drift)
    return _EndingBridge(SimUsbBridge(clock=clock, rate=rate, block_frames=config.audio.block_frames,
                                      settings=settings, headset=headset, host=host), ends)


class _Ends:
    """Where the simulated line's audio ends: when every side given has run out (silence after)."""

    def __init__(self) -> None:
        self._open: dict[int, bool] = {}

    def signal(self, samples: Samples | None) -> Any:
        """What a simulated USB end sends: silence, an array, or a streamed source, read in order."""
        if samples is None:
            return None
        side = len(self._open)
        self._open[side] = True
        array = samples if isinstance(samples, np.ndarray) else None

        def read(first: int, count: int) -> np.ndarray:
            piece = array[first:first + count] if array is not None else samples.read(count)  # type: ignore[union-attr]
            if len(piece) < count:
                self._open[side] = False
                piece = np.concatenate([piece, np.zeros(count - len(piece), np.int16)])
            return piece

        return read

    @property
    def ended(self) -> bool:
        return bool(self._open) and not any(self._open.values())


class _EndingBridge:
    """The simulated bridge as the simulated codec: ``read()`` gives None once the line's audio ended."""

    def __init__(self, bridge: Any, ends: _Ends) -> None:
        self.bridge, self._ends = bridge, ends
        self.rig, self.rate, self.block_frames = bridge.rig, bridge.rate, bridge.block_frames

    def read(self, timeout: float | None = None) -> Any:
        return None if self._ends.ended else self.bridge.read(timeout)

    def __getattr__(self, name: str) -> Any:  # start, play, play_pending, stop_playing, stats, close
        return getattr(self.bridge, name)


def make_hid(config: Config, clock: Clock, on_event: Callable[[object], None], usb: SimUsb | None) -> Any:
    """The headset's HID telephony controls, forwarded to and from the PC through our gadget."""
    from linetap.drivers.hid.hidraw import HidTelephony, find_headset

    hid = config.board_profile().hid
    if hid.driver == "sim":
        assert usb is not None, "hid.driver = \"sim\" needs the simulated USB inline board"
        return HidTelephony(usb.HEADSET_NODE, hid.gadget, on_event, clock=clock, nodes=usb.nodes)
    return HidTelephony(hid.headset or find_headset(), hid.gadget, on_event, clock=clock)


def bridge_codec(config: Config, clock: Clock, usb: SimUsb | None) -> Codec:
    """The USB bridge between the headset and the PC (``usb``'s on the simulated board), as the codec."""
    if usb is not None:
        return usb.bridge
    from linetap.drivers.usbbridge import UsbBridgeCodec

    audio, gadget = config.board_profile().audio, config.board_profile().gadget
    assert audio.headset and audio.gadget and gadget is not None  # the profile schema requires them
    return UsbBridgeCodec(audio.headset, audio.gadget, clock=clock, rate=config.audio.rate,
                          block_frames=config.audio.block_frames, gadget_rate=gadget.rates[0],
                          queue_blocks=config.audio.queue_blocks)


def board_pin_factory(config: Config) -> Any:
    """gpiozero's MockFactory on the simulated board (handset on its cradle); None on a real board.

    On a real board gpiozero loads the factory the profile names itself.
    """
    gpio = config.board_profile().gpio
    if gpio.pin_factory != "mock":
        # gpiozero's own way of naming the factory; Panel raises if it cannot load it.
        os.environ.setdefault("GPIOZERO_PIN_FACTORY", gpio.pin_factory)
        return None
    factory = sim_pin_factory()
    if gpio.hook is not None:
        # The simulated handset starts on its cradle (a floating mock pin reads low).
        on_hook = factory.pin(gpio.hook)
        (on_hook.drive_low if gpio.hook_active == "high" else on_hook.drive_high)()
    return factory


def make_panel(config: Config, pin_factory: Any, on_event: Callable[[object], None] | None) -> Panel:
    """The front panel on the profile's pins."""
    gpio = config.board_profile().gpio
    return Panel(rec_led=gpio.rec_led,
                 status_led=(gpio.status_led.red, gpio.status_led.green, gpio.status_led.blue),
                 pause_button=gpio.pause_button, flag_button=gpio.flag_button,
                 hook=gpio.hook, hook_active_high=gpio.hook_active == "high",
                 hook_debounce=gpio.hook_debounce_ms / 1000,
                 long_press=config.controls.long_press_s,
                 pin_factory=pin_factory, on_event=on_event)


def make_line(config: Config, port: str, clock: Clock, on_event: Callable[[object], None], *,
              command_timeout: float = 2.0) -> V253Line:
    """The voice modem on ``port`` (the profile's, or the simulated modem's pty), initialised."""
    return V253Line(port, clock=clock, on_event=on_event, baudrate=config.board_profile().line.baudrate,
                    command_timeout=command_timeout)


def list_devices(*, as_json: bool) -> int:
    """``linetap devices``: print the audio devices and serial ports this machine has (for a board profile)."""
    import serial.tools.list_ports

    from linetap.drivers.audio import list_devices as audio_devices

    try:
        audio = [dataclasses.asdict(d) for d in audio_devices()]
    except DeviceError as exc:
        audio = [{"error": str(exc)}]
    ports = [{"device": p.device, "description": p.description} for p in serial.tools.list_ports.comports()]
    if as_json:
        print(json.dumps({"audio": audio, "serial": ports}, indent=2))
        return 0
    print("audio devices:")
    for d in audio:
        print(f"  {d}" if "error" in d else
              f"  {d['index']:>2}: {d['name']} (in {d['inputs']}, out {d['outputs']}, "
              f"{d['default_rate']:.0f} Hz)")
    print("serial ports:" + ("" if ports else " none"))
    for p in ports:
        print(f"  {p['device']}: {p['description']}")
    return 0


def gadget_spec(config: Config) -> GadgetSpec:
    """What the PC sees on a USB inline board: the profile's ids and rates, our HID descriptor."""
    from linetap.drivers.hid.gadget import report_descriptor, report_length

    gadget = config.board_profile().gadget
    assert gadget is not None, "only the USB inline boards have a gadget"
    return GadgetSpec(vendor_id=gadget.vendor_id, product_id=gadget.product_id, serial=config.device.id,
                      rates=tuple(gadget.rates), hid_descriptor=report_descriptor(),
                      hid_report_length=report_length())


def usb_gadget(config: Config, action: str, root: Path) -> int:
    """``linetap gadget up|down``: make or remove the USB device the PC sees (the image's unit runs it)."""
    profile = config.board_profile()
    if profile.gadget is None:
        print(f"board {profile.name} has no USB gadget (only the USB inline boards have one): nothing to do")
        return 0
    if action == "down":
        print("usb gadget removed" if gadget_down(root) else "no usb gadget to remove")
        return 0
    spec = gadget_spec(config)
    udc = gadget_up(root, spec)
    print(f"usb gadget {spec.vendor_id:04x}:{spec.product_id:04x} serial {spec.serial} bound to {udc}")
    return 0
