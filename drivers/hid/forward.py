"""Forwarding telephony reports between a USB headset and the PC, through the box (sans-IO).

The box sits between the two: the PC sees the box's own HID interface
(:mod:`linetap.drivers.hid.gadget`), the headset sees the box as its host.

- A headset input report is decoded with the headset's own descriptor; its
  hook, mute and flash become input reports of the box's interface, so the
  headset's buttons keep working for the softphone: the hook switch as a
  state, mute and flash as presses (set, then clear).
- An output report from the PC (the softphone's LEDs) is decoded with the
  box's descriptor: the off-hook LED is the PC's word that a call is on
  (``HookChanged(source="hid-host")``), the mute LED whether the far end
  hears the agent (``MuteChanged(source="hid-host")``). The LEDs are
  re-encoded for the headset, and the headset decoder is told the PC's
  state, so a momentary hook or mute button toggles from the truth. When
  the PC answers or ends a call itself, the box's hook switch follows and
  says so, so that a later mute press does not report "on hook" mid-call.

Every decoded event of both sides is handed to the box as well.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from linetap.drivers.events import HookChanged, MuteChanged, PhoneButton
from linetap.drivers.hid import gadget
from linetap.drivers.hid.descriptor import ReportDescriptor
from linetap.drivers.hid.telephony import FLASH, HOOK_SWITCH, PHONE_MUTE, TelephonyDecoder, encode_report


@dataclass
class Step:
    """What one report leads to: events for the box, reports for the PC and for the headset, in order."""

    events: list[object] = field(default_factory=list)
    to_host: list[bytes] = field(default_factory=list)
    to_headset: list[bytes] = field(default_factory=list)


class Forwarder:
    """Both directions of one headset and the PC. Not thread-safe: the driver serialises the calls."""

    def __init__(self, headset: ReportDescriptor, box: ReportDescriptor | None = None) -> None:
        self.box = box or gadget.descriptor()
        self.headset = TelephonyDecoder(headset, source="hid-headset", kind="input")
        self.host = TelephonyDecoder(self.box, source="hid-host", kind="output")
        self._hook = False  # what the box's interface tells the PC

    def plug(self, headset: ReportDescriptor) -> list[bytes]:
        """A headset (again, perhaps another one): its decoder starts from the PC's state; returns its LED reports."""
        self.headset = TelephonyDecoder(headset, source="hid-headset", kind="input")
        return self._leds_for_headset()

    def _leds_for_headset(self) -> list[bytes]:
        state, level = self.host.state, self.host.level
        self.headset.sync(off_hook=state["hook"], muted=state["mute"])
        return self.headset.encode_leds(off_hook=state["hook"], mute=state["mute"], ring=level("ring"),
                                        hold=level("hold"), microphone=level("microphone"))

    def _to_host(self, hook: bool, **pressed: bool) -> bytes:
        values = {HOOK_SWITCH: hook, PHONE_MUTE: pressed.get("mute", False), FLASH: pressed.get("flash", False)}
        return encode_report(self.box, "input", 0, values)

    def from_headset(self, report: bytes) -> Step:
        """A headset input report: events, and the box's input reports for the PC."""
        step = Step(events=self.headset.decode(report))
        for event in step.events:
            if isinstance(event, HookChanged):
                self._hook = event.off_hook
                step.to_host.append(self._to_host(self._hook))
            elif isinstance(event, MuteChanged) or isinstance(event, PhoneButton) and event.button == "flash":
                press = "mute" if isinstance(event, MuteChanged) else "flash"
                step.to_host += [self._to_host(self._hook, **{press: True}), self._to_host(self._hook)]
        return step

    def from_host(self, report: bytes) -> Step:
        """An output report of the PC to the box: events, and the headset's LED reports."""
        step = Step(events=self.host.decode(report))
        if step.events:
            step.to_headset = self._leds_for_headset()
            if self.host.state["hook"] != self._hook:  # answered or ended on the PC: the box's hook follows
                self._hook = self.host.state["hook"]
                step.to_host.append(self._to_host(self._hook))
        return step
