"""Board profiles: which audio device, pins and line interface a box is built from.

A profile is data (``hardware/boards/<name>.toml``), never code: the app
reads it once and builds the drivers it names. :func:`load_board` takes the
name of a built-in profile or the path of a profile file and returns a frozen
:class:`BoardProfile`, or raises one ConfigError listing every problem with
its key path, value and fix. How to write a profile: ``hardware/README.md``.

Pins are BCM GPIO numbers (what gpiozero calls ``GPIO17``), not the physical
pin numbers of the 40-pin header; :data:`HEADER_PIN` maps one to the other.
"""

from __future__ import annotations

import difflib
import logging
import re
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, StrictInt, StrictStr, model_validator

from linetap.firmware.errors import ConfigError
from linetap.firmware.schema import Invalid, Problem, Schema, load_model, parse_toml, read_toml

logger = logging.getLogger(__name__)

# BCM GPIO number -> physical pin on the 40-pin header (identical on every 40-pin Pi, Zero 2 W to Pi 5).
HEADER_PIN: dict[int, int] = {
    0: 27, 1: 28, 2: 3, 3: 5, 4: 7, 5: 29, 6: 31, 7: 26, 8: 24, 9: 21, 10: 19, 11: 23, 12: 32,
    13: 33, 14: 8, 15: 10, 16: 36, 17: 11, 18: 12, 19: 35, 20: 38, 21: 40, 22: 15, 23: 16,
    24: 18, 25: 22, 26: 37, 27: 13,
}
_GPIO_AT_HEADER_PIN = {header: bcm for bcm, header in HEADER_PIN.items()}

BOARD_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")


def _bcm_pin(pin: int) -> int:
    if pin in HEADER_PIN:
        return pin
    hint = ""
    if pin in _GPIO_AT_HEADER_PIN:
        hint = f" (header pin {pin} is GPIO{_GPIO_AT_HEADER_PIN[pin]})"
    raise ValueError(f"not a GPIO of the 40-pin header; use the BCM GPIO number 0..27, "
                     f"not the physical pin number{hint}; see hardware/pinouts.md")


def _board_name(name: str) -> str:
    if BOARD_NAME.fullmatch(name):
        return name
    raise ValueError("must be 1-64 characters of a-z, 0-9 and '-', starting with a letter or digit; "
                     "use the file's name without .toml, e.g. 'pi4-usb-codec'")


BcmPin = Annotated[StrictInt, AfterValidator(_bcm_pin)]
# TOML arrays arrive as lists; frozen models keep them as tuples of strictly typed items.
PinList = Annotated[tuple[BcmPin, ...], Field(strict=False, max_length=len(HEADER_PIN))]
ChannelList = Annotated[tuple[Annotated[StrictInt, Field(ge=0, le=31)], ...],
                        Field(strict=False, min_length=1, max_length=32)]


USB_BRIDGES = ("usb-bridge", "sim-usb-bridge")
"""Audio drivers that sit inline on a USB headset: the PC sees our gadget, the headset sees us."""

# The rates a USB gadget may offer the PC (UAC2 in Linux takes a list; softphones use 48 and 16 kHz).
GadgetRate = Literal[8000, 16000, 24000, 32000, 44100, 48000]


class AudioProfile(Schema):
    """The codec: one duplex device, capture channels for both sides, playback into the call.

    With ``usb-bridge`` the "codec" is the inline USB bridge: ``headset`` is
    the USB headset on a host port, ``gadget`` our own USB audio gadget that
    the PC plays to and records from; near is the headset mic, far what the
    PC plays, and the announcement is mixed into what the PC receives.
    ``sim-usb-bridge`` is the same bridge between a simulated headset and PC.
    """

    driver: Literal["sounddevice", "sim", "usb-bridge", "sim-usb-bridge"]
    # Case-insensitive substring of the PortAudio device name; required for "sounddevice".
    device: str | None = None
    # usb-bridge: substrings of the headset's and of our gadget's PortAudio names.
    headset: str | None = None
    gadget: str | None = None
    channels: int = Field(default=2, ge=2, le=32)
    near: int = Field(default=0, ge=0, le=31)  # capture channel carrying the agent (handset mic)
    far: int = Field(default=1, ge=0, le=31)  # capture channel carrying the caller (earpiece)
    out_channels: int = Field(default=2, ge=1, le=32)
    line_out: ChannelList = (0,)  # playback channels that carry the announcement into the call
    native_rate: int | None = Field(default=None, ge=8000, le=192000)  # force the device rate

    @model_validator(mode="after")
    def _check(self) -> AudioProfile:
        problems = []
        if self.driver == "sounddevice" and not self.device:
            problems.append(Problem(("device",), self.device,
                                    'required with driver "sounddevice"; set part of the device '
                                    'name as `python -m sounddevice` lists it, e.g. "USB Audio"'))
        if self.driver == "usb-bridge":
            for key, example in (("headset", "USB Audio"), ("gadget", "UAC2_Gadget")):
                if not getattr(self, key):
                    problems.append(Problem((key,), None, f'required with driver "usb-bridge"; set part of '
                                                         f'its name as `linetap devices` lists it, '
                                                         f'e.g. "{example}"'))
        elif self.headset is not None or self.gadget is not None:
            key = "headset" if self.headset is not None else "gadget"
            problems.append(Problem((key,), getattr(self, key), 'only used with driver "usb-bridge"; '
                                                                'remove it, or set driver = "usb-bridge"'))
        if self.near == self.far:
            problems.append(Problem(("far",), self.far,
                                    "the same channel as audio.near; the two sides of the call "
                                    "need two channels, e.g. near = 0, far = 1"))
        for key, channel in (("near", self.near), ("far", self.far)):
            if channel >= self.channels:
                problems.append(Problem((key,), channel,
                                        f"no such capture channel (audio.channels = {self.channels}); "
                                        f"use 0..{self.channels - 1}"))
        for index, channel in enumerate(self.line_out):
            if channel >= self.out_channels:
                problems.append(Problem(("line_out", index), channel,
                                        f"no such playback channel (audio.out_channels = "
                                        f"{self.out_channels}); use 0..{self.out_channels - 1}"))
        if len(set(self.line_out)) != len(self.line_out):
            problems.append(Problem(("line_out",), self.line_out, "lists a channel twice; list each once"))
        if problems:
            raise Invalid(problems)
        return self


class RgbPins(Schema):
    red: BcmPin
    green: BcmPin
    blue: BcmPin


class GpioProfile(Schema):
    """Front-panel LEDs and buttons and the hook sense input, as BCM GPIO numbers."""

    pin_factory: Literal["lgpio", "rpigpio", "mock"]  # mock: gpiozero's MockFactory, simulation only
    rec_led: BcmPin
    status_led: RgbPins
    pause_button: BcmPin
    flag_button: BcmPin
    hook: BcmPin | None = None  # absent where hook state comes from the modem or voice activity
    hook_active: Literal["low", "high"] = "low"  # level the hook input has while off hook
    hook_debounce_ms: int = Field(default=30, ge=0, le=1000)
    # GPIOs the board's own hardware uses (a HAT's I2S and I2C, its button): ours must stay off them.
    reserved: PinList = ()

    def assigned(self) -> dict[str, int]:
        """Key path -> GPIO, for every pin this profile gives a role."""
        pins = {"gpio.rec_led": self.rec_led,
                "gpio.status_led.red": self.status_led.red,
                "gpio.status_led.green": self.status_led.green,
                "gpio.status_led.blue": self.status_led.blue,
                "gpio.pause_button": self.pause_button,
                "gpio.flag_button": self.flag_button}
        if self.hook is not None:
            pins["gpio.hook"] = self.hook
        return pins

    @model_validator(mode="after")
    def _check(self) -> GpioProfile:
        problems = []
        first_use: dict[int, str] = {}
        for path, pin in self.assigned().items():
            keys = tuple(path.split(".")[1:])
            if pin in first_use:
                problems.append(Problem(keys, pin, f"GPIO{pin} is also {first_use[pin]}; "
                                                   f"give each role its own GPIO"))
            else:
                first_use[pin] = path
            if pin in self.reserved:
                problems.append(Problem(keys, pin, f"GPIO{pin} is used by the board itself "
                                                   f"(gpio.reserved); choose a free GPIO"))
        if problems:
            raise Invalid(problems)
        return self


class LineProfile(Schema):
    """The line interface: a V.253 voice modem (ring, caller ID, hook, DTMF) or none."""

    driver: Literal["none", "v253", "sim"] = "none"
    port: str | None = None  # serial device or pyserial URL; required for "v253"
    baudrate: int = Field(default=115200, ge=300, le=4_000_000)

    @model_validator(mode="after")
    def _check(self) -> LineProfile:
        if self.driver == "v253" and not self.port:
            raise Invalid([Problem(("port",), self.port,
                                   'required with driver "v253"; set the modem\'s serial device, '
                                   'preferably its stable /dev/serial/by-id/... path')])
        return self


class HidProfile(Schema):
    """The headset's HID telephony controls (hook switch, mute) and our gadget's HID function.

    ``headset`` is the headset's hidraw node; None finds the one whose report
    descriptor has the Telephony usage page. ``gadget`` is the node of our
    gadget's HID function, where the PC's LED reports arrive and the
    headset's buttons are forwarded.
    """

    driver: Literal["none", "hidraw", "sim"] = "none"
    headset: str | None = None
    gadget: str = "/dev/hidg0"


class GadgetProfile(Schema):
    """The USB device the PC sees (made through configfs at boot): our ids, the rates offered."""

    # pid.codes' test pair by default (https://pid.codes/1209/0001/); a fleet sets its own.
    vendor_id: int = Field(default=0x1209, ge=1, le=0xFFFF)
    product_id: int = Field(default=0x0001, ge=0, le=0xFFFF)
    rates: Annotated[tuple[GadgetRate, ...], Field(strict=False, min_length=1, max_length=6)] = (48000, 16000)

    @model_validator(mode="after")
    def _check(self) -> GadgetProfile:
        if len(set(self.rates)) != len(self.rates):
            raise Invalid([Problem(("rates",), self.rates, "lists a rate twice; list each once")])
        return self


class CallDetectProfile(Schema):
    """Where the box learns that a call starts and ends."""

    source: Literal["hook-gpio", "v253", "vad", "hid"]


class BoardProfile(Schema):
    name: Annotated[StrictStr, AfterValidator(_board_name)]
    description: str
    audio: AudioProfile
    gpio: GpioProfile
    line: LineProfile = LineProfile()
    hid: HidProfile = HidProfile()
    gadget: GadgetProfile | None = None  # only for the usb-bridge drivers
    call_detect: CallDetectProfile

    @model_validator(mode="after")
    def _check(self) -> BoardProfile:
        source = self.call_detect.source
        problems = []
        if source == "hook-gpio" and self.gpio.hook is None:
            problems.append(Problem(("call_detect", "source"), source,
                                    'needs a hook sense input; set gpio.hook to its GPIO, '
                                    'or use source "v253" (voice modem) or "vad" (voice activity)'))
        if source == "v253" and self.line.driver not in ("v253", "sim"):
            problems.append(Problem(("call_detect", "source"), source,
                                    f'needs a voice modem but line.driver = {self.line.driver!r}; '
                                    f'set line.driver = "v253" and line.port'))
        if source == "hid" and self.hid.driver == "none":
            problems.append(Problem(("call_detect", "source"), source,
                                    'needs the headset\'s HID controls but hid.driver = "none"; '
                                    'set hid.driver = "hidraw"'))
        problems += self._usb_problems()
        if problems:
            raise Invalid(problems)
        return self


    def _usb_problems(self) -> list[Problem]:
        bridge = self.audio.driver in USB_BRIDGES
        if bridge and self.gadget is None:
            return [Problem(("gadget",), None, f'required with audio.driver = "{self.audio.driver}": '
                                              f'add a [gadget] section (its defaults: pid.codes\' test ids, '
                                              f'48 and 16 kHz), see hardware/README.md')]
        if not bridge and self.gadget is not None:
            return [Problem(("gadget",), "[gadget]", 'only used by the USB inline boards '
                                                     '(audio.driver = "usb-bridge"); remove the section')]
        return []


def builtin_boards() -> list[str]:
    """Names of the board profiles that ship with linetap."""
    boards = resources.files("linetap.hardware") / "boards"
    return sorted(p.name.removesuffix(".toml") for p in boards.iterdir() if p.name.endswith(".toml"))


def is_profile_path(name_or_path: str) -> bool:
    """True for a profile file's path, False for a built-in board's name."""
    return "/" in name_or_path or name_or_path.endswith(".toml")


def load_board(name_or_path: str) -> BoardProfile:
    """A built-in profile by name (``"pi4-usb-codec"``) or a profile file by path.

    A value containing a slash or ending in ``.toml`` is a path; anything else
    is a built-in name. Raises ConfigError on an unknown name, a missing or
    malformed file, or an inconsistent profile.
    """
    if is_profile_path(name_or_path):
        path = Path(name_or_path)
        # Any path may be written here: only a regular file is read, and no line of it is echoed.
        data = read_toml(path, missing_hint="fix the path in device.board, or use a built-in board: "
                                            + ", ".join(builtin_boards()), show_line=False)
        source = str(path)
    else:
        resource = resources.files("linetap.hardware") / "boards" / f"{name_or_path}.toml"
        if not BOARD_NAME.fullmatch(name_or_path) or not resource.is_file():
            known = builtin_boards()
            close = difflib.get_close_matches(name_or_path, known, n=1)
            suggestion = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"no built-in board {name_or_path!r}; {suggestion}built-in boards: "
                              f"{', '.join(known)}; or give the path of a profile TOML "
                              f"(see hardware/README.md)")
        source = f"board {name_or_path} ({resource})"
        data = parse_toml(resource.read_text(encoding="utf-8"), source=source)
    board = board_from_data(data, source=source)
    logger.debug("board profile loaded name=%s source=%s", board.name, source)
    return board


def board_from_data(data: dict[str, Any], *, source: str) -> BoardProfile:
    """Validate an already parsed profile; ``source`` names it in error messages."""
    return load_model(BoardProfile, data, source=source, guide="hardware/README.md", show_unknown=False)
