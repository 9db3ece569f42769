"""Scripted calls on the simulated board, for replay, the demo and the tests.

A script is a list of steps at stream times: drive the hook pin, press a
button, make the simulated modem ring or send caller ID. Each step waits
until the driver's event has reached the call loop, so the result does not
depend on thread timing, while the audio runs as fast as the machine allows
(a :class:`~linetap.firmware.clock.ManualClock`), or in real time with
``--realtime``.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from linetap.drivers.audio import SampleSource
from linetap.drivers.events import ButtonPressed, CallerId, HookChanged, LineState, MuteChanged, Ring
from linetap.firmware.callloop import CallLoop, Happening
from linetap.firmware.clock import Clock
from linetap.firmware.config import Config
from linetap.firmware.consent import Prompt, decode_mono
from linetap.firmware.devices import Board, build_board
from linetap.firmware.errors import ConfigError, DeviceTimeout
from linetap.firmware.recorder import Recording, Sink

logger = logging.getLogger(__name__)

# Steps on the simulated USB inline board: the event source each waits for, and what it is.
USB_STEPS = {"headset-hook-off": ("hid-headset", "the headset's hook switch off hook"),
             "headset-hook-on": ("hid-headset", "the headset's hook switch on hook"),
             "pc-off-hook": ("hid-host", "the softphone's off-hook LED"),
             "pc-on-hook": ("hid-host", "the softphone's off-hook LED going out"),
             "headset-mute": ("hid-headset", "the headset's mute button"),
             "headset-unplug": ("lost", "the headset's HID node going away"),
             "headset-plug": ("ready", "the headset's HID node back")}
# A script for the handset-cord boards, on the USB inline board: the hook is the headset's; the softphone
# rings and gets the caller ID, not the box.
ON_USB = {"hook-off": "headset-hook-off", "hook-on": "headset-hook-on", "ring": None, "caller-id": None}
EVENT_TIMEOUT = 5.0  # a simulated driver answers in milliseconds; this only bounds a failure


class _Inbox:
    """Driver events on their way to the loop, with a way to wait for one to arrive."""

    def __init__(self) -> None:
        self.queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._seen: list[object] = []
        self._cond = threading.Condition()

    def post(self, item: object) -> None:
        self.queue.put(item)
        with self._cond:
            self._seen.append(item)
            self._cond.notify_all()

    def mark(self) -> int:
        with self._cond:
            return len(self._seen)

    def wait_for(self, since: int, match: Callable[[object], bool], what: str) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: any(match(e) for e in self._seen[since:]),
                                       timeout=EVENT_TIMEOUT):
                raise DeviceTimeout(f"the simulated board did not report {what} within "
                                    f"{EVENT_TIMEOUT} s")


@dataclass(frozen=True)
class Step:
    t: float
    kind: str  # hook-off, hook-on, modem-hook-off, modem-hook-on, pause, pause-long, flag, ring, caller-id,
    # or on the simulated USB inline board one of USB_STEPS
    args: dict[str, Any] = field(default_factory=dict)


class SimulatedCalls:
    """Runs a script against the simulated board through the real call loop."""

    def __init__(self, config: Config, near: np.ndarray | SampleSource, far: np.ndarray | SampleSource, *,
                 sink: Sink, clock: Clock, prompts: dict[str, Prompt] | None = None,
                 on_happening: Callable[[Happening], None] | None = None,
                 on_recording: Callable[[Recording], None] | None = None,
                 keep_played: bool = True) -> None:
        profile = config.board_profile()
        if profile.audio.driver not in ("sim", "sim-usb-bridge") or profile.gpio.pin_factory != "mock":
            raise ConfigError(f"scripted calls need a simulated board; device.board is "
                              f"{config.device.board!r}. Use the default config, board = \"sim\" or "
                              f"\"sim-usb-inline\"")
        self._inbox = _Inbox()
        self.board: Board = build_board(config, clock, self._inbox.post, near=near, far=far,
                                        keep_played=keep_played)
        try:
            self.loop = CallLoop(config, self.board, sink, clock, inbox=self._inbox.queue,
                                 prompts=prompts, on_happening=on_happening,
                                 on_recording=on_recording)
        except BaseException:
            self.board.close()
            raise
        self._gpio = profile.gpio
        self._long_press = config.controls.long_press_s

    def run(self, script: list[Step], *, after_block: Callable[[], None] | None = None) -> None:
        """Play the audio through the loop, doing each step when its time comes.

        ``after_block`` is called after each block is processed (tests check
        invariants there).
        """
        steps = sorted(script, key=lambda s: s.t)
        codec = self.board.codec
        codec.start()
        try:
            while True:
                block = codec.read(timeout=10.0)
                if block is None:
                    break
                while steps and steps[0].t <= block.t:
                    self._do(steps.pop(0))
                self.loop.drain()
                self.loop.process(block)
                if after_block is not None:
                    after_block()
            for step in steps:  # steps after the audio ended (a hang-up at the very end)
                self._do(step)
            self.loop.drain()
            self.loop.finish()
        finally:
            self.board.close()

    def _pin(self, number: int):  # noqa: ANN202 - gpiozero's MockPin
        return self.board.pin_factory.pin(number)

    def _do(self, step: Step) -> None:
        if self.board.usb is not None and step.kind in ON_USB:  # a script written for the handset cord
            if ON_USB[step.kind] is None:
                logger.info("script step %s skipped: a USB headset line carries no ring or caller ID", step.kind)
                return
            step = Step(step.t, ON_USB[step.kind] or "", step.args)
        mark = self._inbox.mark()
        if step.kind in ("hook-off", "hook-on"):
            off = step.kind == "hook-off"
            pin = self._pin(self._gpio.hook)
            (pin.drive_high if off == (self._gpio.hook_active == "high") else pin.drive_low)()
            self._inbox.wait_for(mark, lambda e: isinstance(e, HookChanged) and e.off_hook == off,
                                 f"the hook going {'off' if off else 'on'}")
        elif step.kind in ("pause", "pause-long", "flag"):
            button = "flag" if step.kind == "flag" else "pause"
            long = step.kind == "pause-long"
            pin = self._pin(self._gpio.pause_button if button == "pause" else self._gpio.flag_button)
            pin.drive_low()
            if long:
                self._inbox.wait_for(mark, lambda e: e == ButtonPressed(button, True), "a long press")
            pin.drive_high()
            if not long:
                self._inbox.wait_for(mark, lambda e: e == ButtonPressed(button, False), "a press")
        elif step.kind in ("modem-hook-off", "modem-hook-on"):
            assert self.board.modem is not None
            off = step.kind == "modem-hook-off"
            self.board.modem.handset(off)
            self._inbox.wait_for(mark, lambda e: isinstance(e, HookChanged) and e.off_hook == off,
                                 f"the modem's handset {'off' if off else 'on'} hook")
        elif step.kind == "ring":
            assert self.board.modem is not None
            self.board.modem.ring()
            self._inbox.wait_for(mark, lambda e: isinstance(e, Ring), "RING")
        elif step.kind == "caller-id":
            assert self.board.modem is not None
            self.board.modem.caller_id(**step.args)
            self._inbox.wait_for(mark, lambda e: isinstance(e, CallerId), "caller ID")
        elif step.kind in USB_STEPS:
            self._do_usb(step.kind, mark)
        else:
            raise ValueError(f"unknown script step {step.kind!r}")

    def _do_usb(self, kind: str, mark: int) -> None:
        """A step on the simulated USB inline board: the headset's buttons, the softphone's LEDs."""
        usb = self.board.usb
        if usb is None:
            raise ConfigError(f"script step {kind!r} needs the simulated USB inline board (sim-usb-inline)")
        source, what = USB_STEPS[kind]
        if kind.startswith("headset-hook"):
            usb.headset.set(hook=kind == "headset-hook-off")
        elif kind.startswith("pc-"):
            usb.host.set_leds(off_hook=kind == "pc-off-hook")
        elif kind.endswith("plug"):
            (usb.headset.unplug if kind == "headset-unplug" else usb.headset.plug)()
            self._inbox.wait_for(mark, lambda e: isinstance(e, LineState) and e.state == source, what)
            return
        else:
            usb.headset.press("mute")
        self._inbox.wait_for(mark, lambda e: getattr(e, "source", None) == source
                             and isinstance(e, HookChanged if "hook" in kind else MuteChanged), what)


def bundled_speech(rate: int) -> tuple[np.ndarray, np.ndarray]:
    """The shipped two-sided conversation (agent near, caller far) at ``rate``."""
    data = resources.files("linetap.firmware") / "data"
    with resources.as_file(data / "speech-near.ogg") as near, resources.as_file(data / "speech-far.ogg") as far:
        return read_speech(near, rate), read_speech(far, rate)


def read_speech(path: Path, rate: int) -> np.ndarray:
    """A WAV or Ogg file as mono int16 at ``rate`` (mixed down and resampled as needed)."""
    if not Path(path).is_file():
        raise ConfigError(f"audio file {path} does not exist (or is not a file)")
    mono = decode_mono(Path(path).read_bytes(), rate, label=f"audio file {path}")
    return (np.clip(mono, -1, 1) * 32767).astype(np.int16)
