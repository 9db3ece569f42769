"""From captured blocks to kept audio: detectors, DTMF masking, the keep gate, QA metrics.

Sans-IO: :class:`Recorder` takes stereo blocks and the call flow's actions
and hands kept audio to a :class:`Sink` (the secure spool on the box, memory
in tests). It never touches a device or a file itself.

Timing. The DTMF masker delays the stored stream by its lookahead (50 ms) so
that a digit's first milliseconds, heard before the detector is sure, are
silenced too. The call flow's decisions (keep, pause, open, close) are taken
at the current *input* position; the recorder files each one on a timeline
at that position and applies it when the delayed output reaches it, sample
exact. So "keep from the hook-off" means from the hook-off sample, whatever
the delay, and a pause covers exactly the paused samples.

What goes to the sink:
- nothing while no call is open or keeping is off;
- silence for paused spans (never the paused audio);
- masked audio otherwise: DTMF tones silenced on both channels.
A discard (caller opt-out, private call) is immediate: the sink drops what it
was given and nothing more of that stretch is written.

A sink that cannot keep audio (spool full, disk full, no key) raises
SpoolError; the recorder turns that into a :class:`Fault` event for the call
flow (which stops keeping and shows the fault pattern) and goes on: the
detectors and the call logic never stop because storage did.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from linetap.drivers.events import HookChanged
from linetap.firmware.callevents import DtmfDetected, Event, FarSpeech, Fault
from linetap.firmware.callrecord import CallRecord
from linetap.firmware.config import CallsSection
from linetap.firmware.errors import SpoolError
from linetap.firmware.dsp import (
    CallActivity,
    CallMetrics,
    CallStarted,
    DtmfMasker,
    DtmfToneOn,
    VadSettings,
    VoiceActivityDetector,
)

logger = logging.getLogger(__name__)

CHANNELS = ("near", "far")


@dataclass(frozen=True)
class Recording:
    """What was kept of one call, handed to the sink when the call closes.

    ``masks`` are (start_s, end_s) in seconds since the call's first sample,
    the same time axis as the call's events.
    """

    call: CallRecord
    frames: int  # stereo frames the sink was given (after any discard)
    audio_start_s: float | None  # where the kept audio begins, on the events' time axis
    masks: tuple[tuple[float, float], ...]
    metrics: dict[str, Any]


class Sink(Protocol):
    """Where kept audio goes. Called on the recorder's thread only."""

    def open(self, call: CallRecord) -> None:
        """A call begins; audio for it follows."""

    def write(self, frames: np.ndarray) -> None:
        """Kept audio: (n, 2) int16, near then far, masked, paused spans silent."""

    def discard(self) -> None:
        """Destroy everything written for the open call (it stays open, empty)."""

    def close(self, recording: Recording) -> None:
        """The call ended: finish what was written and record its summary."""


class MemorySink:
    """Keeps recordings in memory: for tests, and for replay before a spool exists."""

    def __init__(self) -> None:
        self.recordings: list[tuple[Recording, np.ndarray]] = []
        self._parts: list[np.ndarray] = []
        self._open: CallRecord | None = None

    def open(self, call: CallRecord) -> None:
        self._open, self._parts = call, []

    def write(self, frames: np.ndarray) -> None:
        self._parts.append(frames.copy())

    def discard(self) -> None:
        self._parts = []

    def close(self, recording: Recording) -> None:
        audio = np.concatenate(self._parts) if self._parts else np.zeros((0, 2), np.int16)
        self.recordings.append((recording, audio))
        self._open, self._parts = None, []


class Recorder:
    """Detectors, masking and the keep gate for one audio stream.

    ``feed(frames)`` returns the events the call flow needs (our DTMF digits,
    the far end starting to speak, and, where the board has no hook signal,
    call start and end from voice activity). The app applies the flow's
    actions with :meth:`open`, :meth:`keep`, :meth:`pause`, :meth:`discard`
    and :meth:`close`. Not thread-safe: one thread (the call thread) owns it.
    """

    def __init__(self, rate: int, sink: Sink, *, vad: VadSettings = VadSettings(),
                 call_activity: CallActivity | None = None,
                 hold_min_s: float = CallsSection().hold_min_s) -> None:
        self.rate = rate
        self._sink = sink
        self._vad = vad
        self._hold_min_s = hold_min_s
        self._masker = DtmfMasker(rate, 2)
        self._far_voice = VoiceActivityDetector(rate, vad)
        self._far_speaking = False
        self._activity = call_activity
        self._pos = 0  # input frames fed
        self._timeline: deque[tuple[int, str, Any]] = deque()
        # The gate, as seen at the output position:
        self._call: CallRecord | None = None
        self._call_start = 0  # input frame at which the open call began
        self._keeping = False
        self._paused = False
        self._frames = 0
        self._audio_start: int | None = None
        self._masks: list[tuple[float, float]] = []
        self._metrics: CallMetrics | None = None
        self._faults: list[Event] = []

    @property
    def lookahead_s(self) -> float:
        """How far the stored stream lags the capture."""
        return self._masker.lookahead_s

    # -- the flow's actions, filed at the current input position --

    def open(self, call: CallRecord) -> None:
        self._timeline.append((self._pos, "open", call))

    def keep(self, on: bool) -> None:
        self._timeline.append((self._pos, "keep", on))

    def pause(self, on: bool) -> None:
        self._timeline.append((self._pos, "pause", on))

    def close(self, call: CallRecord) -> None:
        self._timeline.append((self._pos, "close", call))

    def discard(self) -> None:
        """Destroy the open call's audio now, including what is still in the delay line."""
        while self._timeline and self._timeline[0][1] != "close":
            self._apply(*self._timeline.popleft())
        self._to_sink(self._sink.discard)
        self._frames, self._audio_start = 0, None
        self._masks = []
        self._metrics = CallMetrics(self.rate, vad=self._vad, hold_min_s=self._hold_min_s)
        logger.info("recorder discarded call=%s", self._call.call_id if self._call else None)

    # -- audio --

    def feed(self, frames: np.ndarray) -> list[Event]:
        """One captured block (n, 2) int16; returns the events it gave rise to."""
        events: list[Event] = []
        masked = self._masker.feed(frames)
        for tone in masked.events:
            if isinstance(tone, DtmfToneOn):
                events.append(DtmfDetected(tone.digit, CHANNELS[tone.channel]))
        self._spans(masked.spans)
        voiced = self._far_voice.feed(frames[:, 1])
        if len(voiced):
            if voiced.any() and not self._far_speaking:
                events.append(FarSpeech())
            self._far_speaking = bool(voiced[-1])
        if self._activity is not None:
            for change in self._activity.feed(frames):  # CallStarted or CallEnded
                events.append(HookChanged(off_hook=isinstance(change, CallStarted), source="vad"))
        out_start = self._pos - self._masker.lookahead_frames
        self._pos += len(frames)
        self._emit(masked.audio, out_start)
        events += self._faults
        self._faults = []
        return events

    def _to_sink(self, call, *args: Any) -> bool:  # noqa: ANN001 - a bound sink method
        """Call the sink; a SpoolError becomes a Fault for the call flow. False if it failed."""
        try:
            call(*args)
        except SpoolError as exc:
            logger.error("recorder sink failed call=%s step=%s error=%s",
                         self._call.call_id if self._call else None, call.__name__, exc)
            self._faults.append(Fault(str(exc)))
            return False
        return True

    def flush(self) -> None:
        """End of the stream (the codec ran out): let the delayed audio and pending actions through."""
        tail = self._masker.flush()
        self._spans(tail.spans)
        self._emit(tail.audio, self._pos - self._masker.lookahead_frames)
        while self._timeline:
            self._apply(*self._timeline.popleft())

    def _spans(self, spans: list) -> None:
        if self._call is None:
            return
        origin = self._call_start / self.rate
        self._masks.extend((round(s.start_s - origin, 3), round(s.end_s - origin, 3)) for s in spans)

    def _emit(self, audio: np.ndarray, first: int) -> None:
        """Write output samples ``first``.. (input positions), applying timeline steps in between."""
        done = 0
        while done < len(audio):
            if self._timeline and self._timeline[0][0] <= first + done:
                self._apply(*self._timeline.popleft())
                continue
            until = len(audio)
            if self._timeline:
                until = min(until, self._timeline[0][0] - first)
            self._write(audio[done:until], first + done)
            done = until
        while self._timeline and self._timeline[0][0] <= first + len(audio):
            self._apply(*self._timeline.popleft())

    def _write(self, audio: np.ndarray, pos: int) -> None:
        if self._call is None or not self._keeping or not len(audio):
            return
        if self._audio_start is None:
            self._audio_start = pos
        if self._paused:
            audio = np.zeros_like(audio)
        if not self._to_sink(self._sink.write, audio):
            self._keeping = False  # nothing more of this call reaches a sink that failed
            return
        assert self._metrics is not None
        self._metrics.feed(audio)
        self._frames += len(audio)

    def _apply(self, pos: int, step: str, value: Any) -> None:
        if step == "open":
            self._call, self._keeping, self._paused = value, False, False
            self._call_start = pos
            self._frames, self._masks, self._audio_start = 0, [], None
            self._metrics = CallMetrics(self.rate, vad=self._vad, hold_min_s=self._hold_min_s)
            self._to_sink(self._sink.open, value)
        elif step == "keep":
            self._keeping = value
        elif step == "pause":
            self._paused = value
        elif step == "close":
            assert self._metrics is not None
            start = None if self._audio_start is None else \
                round((self._audio_start - self._call_start) / self.rate, 3)
            self._to_sink(self._sink.close, Recording(value, self._frames, start, tuple(self._masks),
                                                      self._metrics.result()))
            self._call, self._keeping, self._paused, self._metrics = None, False, False, None
