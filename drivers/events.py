"""What the drivers tell the rest of the box, as frozen dataclasses.

GPIO hook sense, a voice modem's handset events and a USB headset's hook
switch (or the PC's off-hook LED) all become :class:`HookChanged`, so the call
flow sees one kind of event whatever the board. Drivers deliver these on their own threads (each driver's docstring
says which); consumers hand them on to a queue and do no work in place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class HookChanged:
    """The handset went off hook (``off_hook=True``) or back on hook."""

    off_hook: bool
    source: Literal["gpio", "modem", "vad", "hid-host", "hid-headset"]


# Where a USB telephony event came from: the PC's LED reports to the box's own HID
# interface ("hid-host": what the softphone says) or the headset's buttons ("hid-headset").
HidSource = Literal["hid-host", "hid-headset"]


@dataclass(frozen=True)
class MuteChanged:
    """The agent's microphone was muted to the far end (``muted=True``) or unmuted.

    Mute is evidence, not a privacy pause: audio keeps being kept, the span is
    marked in the call's record.
    """

    muted: bool
    source: HidSource


@dataclass(frozen=True)
class PhoneButton:
    """A telephony button other than hook and mute was pressed on a USB headset.

    ``button`` is ``flash``, ``redial``, ``drop`` or ``button-<n>`` (a programmable button).
    """

    button: str
    source: HidSource


@dataclass(frozen=True)
class PhoneLed:
    """The PC set a telephony LED other than off-hook and mute: ``ring``, ``hold`` or ``microphone``."""

    led: str
    on: bool


@dataclass(frozen=True)
class ButtonPressed:
    """A front-panel button was pressed: ``long`` once held past the long-press time."""

    button: Literal["pause", "flag"]
    long: bool


@dataclass(frozen=True)
class Ring:
    """The line is ringing (one event per ring burst).

    ``cadence`` is the distinctive-ring pattern the modem reported with it
    (``RING 2``, ``RING B``: which of the line's numbers was called), or
    ``None`` for a plain ring.
    """

    cadence: str | None = None


@dataclass(frozen=True)
class CallerId:
    """Caller ID as the line delivered it. Any field may be missing.

    ``number`` and ``name`` are personal data: never log them at INFO.
    """

    number: str | None = None
    name: str | None = None
    date: str | None = None  # MMDD as sent on the line
    time: str | None = None  # HHMM as sent on the line
    # Why the number (or, beside a number, the name) was not delivered: one of
    # WITHHELD_REASONS. Plain, not personal data: it identifies nobody.
    reason_withheld: str | None = None


WITHHELD_REASONS = ("private", "out-of-area", "unavailable", "failed")
"""Reasons a caller ID carries no number: the caller asked for privacy; the
network could not deliver it (out of area, e.g. an international or payphone
call); the line said "unavailable"/"no name"; the modem heard a caller-ID
signal it could not decode."""


@dataclass(frozen=True)
class DtmfDigit:
    """A DTMF digit reported by the line interface (not by our own detector)."""

    digit: str


@dataclass(frozen=True)
class LineTone:
    """A call-progress condition the line interface reported."""

    tone: Literal["busy", "dial-tone", "silence", "quiet", "ringback", "fax", "data"]


@dataclass(frozen=True)
class LineState:
    """The line interface's link state changed (for telemetry and alarms)."""

    state: Literal["connecting", "ready", "lost"]
    detail: str = ""
