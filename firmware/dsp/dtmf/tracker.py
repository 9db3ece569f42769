"""One channel's digit state machine, and the events it reports.

Accepted frames in, :class:`DtmfToneOn` and :class:`DtmfEvent` out, with the
timing of the package docstring (:data:`~.figures.CONFIRM_FRAMES`,
:data:`~.figures.END_FRAMES`).
"""

from __future__ import annotations

from dataclasses import dataclass

from linetap.firmware.dsp.dtmf.figures import CONFIRM_FRAMES, DIGITS, END_FRAMES, LOW_FRAME_SUBS


@dataclass(frozen=True, slots=True)
class DtmfToneOn:
    """A digit was confirmed; it began at sample ``start``. Its end comes later as a DtmfEvent."""

    digit: str
    start: int
    channel: int = 0


@dataclass(frozen=True, slots=True)
class DtmfEvent:
    """A digit, from sample ``start`` to sample ``end`` (exclusive), reported when it ended."""

    digit: str
    start: int
    end: int
    channel: int = 0



class DigitTracker:
    """One channel's digit state machine: accepted frame codes in, events out."""

    def __init__(self, channel: int, sub: int) -> None:
        self.channel = channel
        self._sub = sub
        self._frame_length = LOW_FRAME_SUBS * sub
        self.run_code = -1
        self.run_length = 0
        self._run_start = 0
        self.active_code = -1
        self._active_start = 0
        self._last_valid_end = 0
        self._frames_without = 0

    def track(self, codes: list[int], first_end: int) -> list[DtmfToneOn | DtmfEvent]:
        events: list[DtmfToneOn | DtmfEvent] = []
        for i, code in enumerate(codes):
            frame_end = first_end + i * self._sub
            if code >= 0:
                if code == self.run_code:
                    self.run_length += 1
                else:
                    self.run_code, self.run_length = code, 1
                    self._run_start = frame_end - self._frame_length
                if code == self.active_code:
                    self._last_valid_end = frame_end
                    self._frames_without = 0
                    continue
                if self.run_length >= CONFIRM_FRAMES:
                    if self.active_code >= 0:
                        events.append(self.end_active())
                    self.active_code = code
                    self._active_start = self._run_start
                    self._last_valid_end = frame_end
                    self._frames_without = 0
                    events.append(DtmfToneOn(DIGITS[code], self._run_start, self.channel))
                    continue
            else:
                self.run_code, self.run_length = -1, 0
            if self.active_code >= 0:
                self._frames_without += 1
                if self._frames_without >= END_FRAMES:
                    events.append(self.end_active())
        return events

    def end_active(self) -> DtmfEvent:
        event = DtmfEvent(DIGITS[self.active_code], self._active_start, self._last_valid_end,
                          self.channel)
        self.active_code = -1
        self._frames_without = 0
        return event
