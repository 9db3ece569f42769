"""Calls from a USB headset's HID telephony controls: one hook from two sources, and mute spans.

On the USB inline board two things say the line is off hook: the headset's
hook switch (``HookChanged`` from ``hid-headset``) and the softphone's
off-hook LED (``hid-host``). Pressing the headset's call button sends both,
one after the other; answering on the PC's screen sends only the LED. The
call flow wants one hook: :meth:`HidCallInput.hook` passes a change of the
combined state and drops the echo from the other side.

Mute likewise: the headset's button and the softphone's mute LED say the
same thing; :meth:`HidCallInput.mute` passes a change once. The call flow
marks the span (``mute-start`` / ``mute-end`` in the call's record, like a
pause, while audio keeps being kept). Sans-IO.
"""

from __future__ import annotations

from linetap.drivers.events import HookChanged, MuteChanged


class HidCallInput:
    """The HID hook and mute state of one box; one thread (the call loop's) feeds it."""

    def __init__(self) -> None:
        self.off_hook = False
        self.muted = False

    def hook(self, event: HookChanged) -> HookChanged | None:
        """The event if it changes the line's hook state, None for the other side's echo."""
        if event.off_hook == self.off_hook:
            return None
        self.off_hook = event.off_hook
        return event

    def mute(self, event: MuteChanged) -> bool:
        """Whether a mute change is news (the other side's echo is not); the call flow marks the span."""
        if event.muted == self.muted:
            return False
        self.muted = event.muted
        return True
