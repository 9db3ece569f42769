"""Calls from a USB headset's HID telephony controls: one hook from two sources, and mute spans.

On the USB inline board two things say the line is off hook: the headset's
hook switch (``HookChanged`` from ``hid-headset``) and the softphone's
off-hook LED (``hid-host``). Pressing the headset's call button sends both,
one after the other; answering on the PC's screen sends only the LED. The
call flow wants one hook: :meth:`HidCallInput.hook` passes a change of the
combined state and drops the echo from the other side.

Mute is evidence, not a privacy pause: audio keeps being kept and the span
is marked in the call's record as ``mute-start`` / ``mute-end`` events (with
the side that said so), added when the call closes. A call that opens while
muted starts with a ``mute-start`` at 0; one that ends muted gets its
``mute-end`` at the call's end. Sans-IO: times come in with the events.
"""

from __future__ import annotations

import dataclasses

from linetap.drivers.events import HookChanged, MuteChanged
from linetap.firmware.callrecord import CallEvent, CallRecord


class HidCallInput:
    """The HID hook and mute state of one box; one thread (the call loop's) feeds it."""

    def __init__(self) -> None:
        self.off_hook = False
        self.muted = False
        self._marks: list[tuple[float, bool, str]] = []  # (monotonic time, muted, source)

    def hook(self, event: HookChanged) -> HookChanged | None:
        """The event if it changes the line's hook state, None for the other side's echo."""
        if event.off_hook == self.off_hook:
            return None
        self.off_hook = event.off_hook
        return event

    def mute(self, event: MuteChanged, now: float) -> bool:
        """Note a mute change at monotonic time ``now``; False when it changes nothing."""
        if event.muted == self.muted:
            return False
        self.muted = event.muted
        self._marks.append((now, event.muted, event.source))
        return True

    def call_opened(self, call: CallRecord) -> None:
        """A call opened: forget older marks; a call that starts muted starts with a mute span."""
        self._marks = [(call.started_mono, True, "already-muted")] if self.muted else []

    def mute_events(self, call: CallRecord) -> tuple[CallEvent, ...]:
        """The call's mute spans as events on its time axis (``call`` is the closed record)."""
        end = call.ended_mono if call.ended_mono is not None else float("inf")
        events, muted = [], False
        for at, on, source in self._marks:
            if call.started_mono <= at <= end:
                events.append(CallEvent(round(at - call.started_mono, 3), "mute-start" if on else "mute-end",
                                        {"source": source}))
                muted = on
        if muted and call.ended_mono is not None:
            events.append(CallEvent(round(end - call.started_mono, 3), "mute-end", {"source": "call-end"}))
        self._marks = []
        return tuple(events)

    def with_mute_spans(self, call: CallRecord) -> CallRecord:
        """``call`` with its mute events merged into its event log, in time order."""
        spans = self.mute_events(call)
        if not spans:
            return call
        events = sorted(call.events + spans, key=lambda event: event.t)  # stable: ties keep the flow's first
        return dataclasses.replace(call, events=tuple(events))
