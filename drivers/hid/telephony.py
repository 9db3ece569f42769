"""Telephony controls of a HID device: reports in, edge events out; LED states out as reports (sans-IO).

From a parsed descriptor (:mod:`linetap.drivers.hid.descriptor`),
:class:`TelephonyDecoder` finds the controls it knows wherever the device put
them: on the Telephony page (0x0B) Hook Switch, Phone Mute, Flash, Redial and
Drop, on the Button page programmable buttons, and on the LED page (0x08)
Off-Hook, Mute, Ring, Hold and Microphone. No table of models: a headset is
read from its own descriptor.

Events are edges, not levels: a report that repeats the last state gives
nothing. Hook and mute follow the descriptor's semantics (HID Usage Tables,
"On/Off Control"): an *absolute* field reports the state (a toggle switch);
a *relative* field is a momentary button, and each press toggles the state.
:meth:`TelephonyDecoder.sync` tells the decoder the state the PC decided (its
off-hook and mute LEDs), so the next press toggles from the truth. A usage
the decoder does not know is ignored and logged once. A field marked constant
that carries usages is read anyway (some headsets mark their hook switch so).

Report bytes are as on the wire: the report id first when the descriptor
numbers its reports, none otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from linetap.drivers.events import HidSource, HookChanged, MuteChanged, PhoneButton, PhoneLed
from linetap.drivers.hid.descriptor import MAX_REPORT_BYTES, Field, Kind, ReportDescriptor

logger = logging.getLogger(__name__)

TELEPHONY_PAGE, LED_PAGE, BUTTON_PAGE = 0x0B, 0x08, 0x09
HOOK_SWITCH, FLASH, REDIAL, DROP, PHONE_MUTE = 0x0B0020, 0x0B0021, 0x0B0024, 0x0B0026, 0x0B002F
LED_MUTE, LED_OFF_HOOK, LED_RING, LED_HOLD, LED_MICROPHONE = 0x080009, 0x080017, 0x080018, 0x080020, 0x080021

INPUT_CONTROLS = {HOOK_SWITCH: "hook", PHONE_MUTE: "mute", FLASH: "flash", REDIAL: "redial", DROP: "drop"}
LED_CONTROLS = {LED_OFF_HOOK: "hook", LED_MUTE: "mute", LED_RING: "ring", LED_HOLD: "hold",
                LED_MICROPHONE: "microphone"}
LED_USAGE = {"off_hook": LED_OFF_HOOK, "mute": LED_MUTE, "ring": LED_RING, "hold": LED_HOLD,
             "microphone": LED_MICROPHONE}


def control_name(usage: int, kind: Kind) -> str | None:
    """What linetap calls ``usage`` in a report of ``kind``, or None for a usage it ignores."""
    if kind == "output":
        return LED_CONTROLS.get(usage)
    if usage >> 16 == BUTTON_PAGE and usage & 0xFFFF:
        return f"button-{usage & 0xFFFF}"
    return INPUT_CONTROLS.get(usage)


def split_report(descriptor: ReportDescriptor, report: bytes) -> tuple[int, bytes]:
    """(report id, data) of a report as on the wire."""
    if descriptor.numbered:
        return (report[0], report[1:]) if report else (0, b"")
    return 0, report


def encode_report(descriptor: ReportDescriptor, kind: Kind, report_id: int, values: Mapping[int, bool]) -> bytes:
    """One report of ``descriptor`` with each usage in ``values`` on or off; every other value zero."""
    numbered = 1 if descriptor.numbered else 0
    whole = 0
    for f in descriptor.fields_of(kind, report_id):
        mask = (1 << f.bit_size) - 1
        if f.variable:
            for i in range(min(f.count, len(f.usages))):
                usage = f.usages[i]
                if usage in values:
                    on = f.logical_max if f.logical_max > 0 else 1
                    value = on if values[usage] else max(f.logical_min, 0)
                    whole |= (value & mask) << (f.bit_offset + i * f.bit_size)
        else:
            active = [f.usages.index(u) + f.logical_min for u in dict.fromkeys(f.usages) if values.get(u)]
            for i, value in enumerate(active[:f.count]):
                whole |= (value & mask) << (f.bit_offset + i * f.bit_size)
    data = whole.to_bytes(descriptor.report_bytes(kind, report_id) - numbered, "little")
    return bytes([report_id]) + data if numbered else data


class TelephonyDecoder:
    """One device's telephony reports: ``kind`` reports in (input from a headset, output from a PC), events out.

    Not thread-safe: one reader thread feeds it. ``source`` names the side in
    the events. :meth:`encode_leds` builds this device's LED (output) reports.
    """

    def __init__(self, descriptor: ReportDescriptor, *, source: HidSource, kind: Kind = "input") -> None:
        self.descriptor = descriptor
        self.source: HidSource = source
        self.kind: Kind = kind
        self._fields = {rid: descriptor.fields_of(kind, rid) for rid in descriptor.report_ids(kind)}
        self._levels: dict[int, dict[str, int]] = {}
        self.state = {"hook": False, "mute": False}
        self.leds = dict.fromkeys(LED_USAGE, False)
        self.unknown: set[int] = set()
        self.reports = 0
        self.refused = 0  # empty, oversized, or of a report id the descriptor does not have
        self.controls = {name: f for f in descriptor.fields_of(kind)
                         for u in (f.usages[:f.count] if f.variable else f.usages)
                         if (name := control_name(u, kind)) is not None}

    @property
    def relative(self) -> dict[str, bool]:
        """For hook and mute where present: True when the device reports presses, False when it reports states."""
        return {name: self.controls[name].relative for name in ("hook", "mute") if name in self.controls}

    def level(self, name: str) -> bool:
        """Whether control ``name`` was set in the last report that carried it."""
        return any(levels.get(name) for levels in self._levels.values())

    def sync(self, *, off_hook: bool | None = None, muted: bool | None = None) -> None:
        """Take the state the other side decided, without an event (the next press toggles from it)."""
        if off_hook is not None:
            self.state["hook"] = off_hook
        if muted is not None:
            self.state["mute"] = muted

    def decode(self, report: bytes) -> list[object]:
        """Events for what changed since the last report of the same id."""
        rid, data = split_report(self.descriptor, report)
        fields = self._fields.get(rid)
        if not report or len(report) > MAX_REPORT_BYTES or fields is None:
            self.refused += 1
            logger.debug("hid report refused side=%s id=%d bytes=%d", self.source, rid, len(report))
            return []
        self.reports += 1
        levels: dict[str, tuple[int, Field]] = {}
        for f in fields:
            if f.usages:
                self._read(f, f.values(data), levels)
        last = self._levels.setdefault(rid, {})
        events: list[object] = []
        for name, (value, f) in levels.items():
            before = last.get(name, 0)
            last[name] = value
            if value != before:
                events.extend(self._edge(name, bool(value) and not before, value, f))
        return events

    def _read(self, f: Field, values: tuple[int, ...], levels: dict[str, tuple[int, Field]]) -> None:
        if f.variable:
            pairs = [(f.usage_of(i), v) for i, v in enumerate(values)]
        else:
            on = {v - f.logical_min for v in values if f.logical_min <= v <= f.logical_max}
            pairs = [(u, 1 if i in on else 0) for i, u in enumerate(f.usages)
                     if i in on or control_name(u, self.kind)]
        for usage, value in pairs:
            name = control_name(usage, self.kind) if usage is not None else None
            if name is not None:
                levels[name] = (max(value, levels.get(name, (0, f))[0]), f)
            elif value and usage is not None and usage not in self.unknown:
                self.unknown.add(usage)
                logger.info("hid usage=0x%08X side=%s not a telephony control: ignored (logged once)",
                            usage, self.source)

    def _edge(self, name: str, pressed: bool, value: int, f: Field) -> list[object]:
        if name in self.state:
            if f.relative:
                if not pressed:
                    return []
                new = not self.state[name]
            else:
                new = bool(value)
                if new == self.state[name]:
                    return []
            self.state[name] = new
            return [HookChanged(new, self.source) if name == "hook" else MuteChanged(new, self.source)]
        if self.kind == "input":
            return [PhoneButton(name, self.source)] if pressed else []
        return [PhoneLed(name, bool(value))]

    def encode_leds(self, *, off_hook: bool | None = None, mute: bool | None = None, ring: bool | None = None,
                    hold: bool | None = None, microphone: bool | None = None) -> list[bytes]:
        """This device's output reports setting the given LEDs; LEDs not given keep their last state.

        One report per report id that holds a given LED (a device with one
        report per LED gets several); none when the device has no such LED.
        """
        given = {"off_hook": off_hook, "mute": mute, "ring": ring, "hold": hold, "microphone": microphone}
        self.leds.update({k: v for k, v in given.items() if v is not None})
        wanted = {LED_USAGE[k] for k, v in given.items() if v is not None}
        values = {LED_USAGE[k]: v for k, v in self.leds.items()}
        reports = []
        for rid in self.descriptor.report_ids("output"):
            if any(wanted & set(f.usages) for f in self.descriptor.fields_of("output", rid)):
                reports.append(encode_report(self.descriptor, "output", rid, values))
        return reports
