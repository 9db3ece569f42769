"""The call loop: the call flow, the recorder and the devices, driven by one thread.

:class:`CallLoop` takes driver events and audio blocks from one queue and is
the only place the call flow's actions touch a device. In service
(:mod:`linetap.firmware.service`) :meth:`CallLoop.run` runs on the calling
thread: it alone touches the call flow, the recorder and the sink, so the
core needs no locks, and an event is handled as soon as it arrives, not at
the next audio block, which keeps the hook-off-to-announcement latency small.

Replay and the demo drive the same loop synchronously (:meth:`CallLoop.process`)
on the simulated board, with a :class:`~linetap.firmware.clock.ManualClock` so
a call runs as fast as the machine allows.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from linetap.drivers.audio import Block
from linetap.drivers.events import ButtonPressed, CallerId, HookChanged, LineState, MuteChanged, Ring
from linetap.firmware import callflow as cf
from linetap.firmware.clock import Clock
from linetap.firmware.config import Config
from linetap.firmware.consent import Prompt, load_prompt
from linetap.firmware.devices import Board
from linetap.firmware.dsp import CallActivity, VadSettings, warning_tone
from linetap.firmware.hidcalls import HidCallInput
from linetap.firmware.keys import INIT_HINT
from linetap.firmware.recorder import Recorder, Recording, Sink
from linetap.firmware.spool import CodecParams, Spool, SpoolSettings, SpoolSink

logger = logging.getLogger(__name__)

# Events the call flow takes; anything else a driver reports is telemetry.
_FLOW_EVENTS = (Ring, CallerId, HookChanged, ButtonPressed)
# The HookChanged sources each call-detect source takes; the first is the one a synthetic hang-up uses.
# "hid": the headset's hook switch and the softphone's off-hook LED, one hook (firmware/hidcalls.py).
_HOOK_SOURCES = {"hook-gpio": ("gpio",), "v253": ("modem",), "vad": ("vad",), "hid": ("hid-host", "hid-headset")}
HEADSET_GONE = "the USB headset is gone"
# Blocks waiting in the loop's queue beyond which the loop is not keeping up (200 ms at 20 ms blocks).
MAX_BACKLOG_BLOCKS = 10


def open_spool(config: Config, data_dir: Path, clock: Clock,
               on_alarm: Callable[[str, str], None] | None = None) -> SpoolSink:
    """The spool under ``data_dir`` (recovery runs now) and the sink the recorder writes to.

    Raises KeyMissing when the box has no central recipient or signing key:
    it must not record what it cannot encrypt and sign.
    """
    settings = SpoolSettings(segment_s=config.spool.segment_s,
                             keep_synced_days=config.spool.keep_synced_days,
                             max_bytes=config.spool.max_bytes or None,
                             min_free_bytes=config.spool.min_free_mb * 1024 * 1024,
                             on_full=config.spool.on_full)
    spool = Spool(data_dir, device_id=config.device.id, clock=clock, settings=settings,
                  on_alarm=on_alarm)
    for finding in spool.recovery.findings:
        logger.warning("spool recovery %s", " ".join(f"{k}={v}" for k, v in finding.as_dict().items()))
    codec = CodecParams(rate=config.audio.rate, bitrate=config.spool.bitrate,
                        segment_s=config.spool.segment_s)
    return SpoolSink(spool, codec)


class _NoSink:
    """Stands in for the spool when the box may not record (no key): keeps nothing."""

    def open(self, call: cf.CallRecord) -> None:
        pass

    def write(self, frames: np.ndarray) -> None:
        pass

    def discard(self) -> None:
        pass

    def close(self, recording: Recording) -> None:
        pass


@dataclass(frozen=True)
class Identify:
    """A fleet request: show the identify pattern for ``seconds``, then what the call flow shows."""

    seconds: float


@dataclass(frozen=True)
class TestAnnouncement:
    """A fleet request: play the prompt into the idle line, recording nothing."""


@dataclass(frozen=True)
class StopWhenIdle:
    """An update's switch: ``stop()`` now if no call is up, then ``answer(True)``; else ``answer(False)``.

    Judged on the loop's thread between two items, so no call can start in between.
    """

    stop: Callable[[], None]
    answer: Callable[[bool], None]


@dataclass(frozen=True)
class Happening:
    """One thing the box did or saw, for the demo's narration and the log."""

    t: float  # stream seconds
    device: str
    what: str


def policy_from(config: Config, prompt: Prompt | None,
                consent_note: dict[str, Any] | None = None) -> cf.CallPolicy:
    """The call flow's policy; ``consent_note`` names consent keys a fleet push changed (noted per call)."""
    consent, calls = config.consent, config.calls
    return cf.CallPolicy(
        announce=consent.announce, announce_when=consent.announce_when,
        far_speech_wait_s=consent.far_speech_wait_s,
        prompt_sha256=prompt.sha256 if prompt else "", language=consent.language,
        warning_tone=consent.warning_tone, warning_interval_s=consent.warning_interval_s,
        opt_out_key=consent.opt_out_key or None, opt_out_window_s=consent.opt_out_window_s,
        ring_timeout_s=calls.ring_timeout_s, hangup_grace_s=calls.hangup_grace_s,
        caller_id_max_age_s=calls.caller_id_max_age_s,
        fleet_consent=tuple(consent_note["changed"]) if consent_note else (),
        config_version=consent_note["config_version"] if consent_note else 0)


def load_prompts(config: Config) -> dict[str, Prompt]:
    """Every configured prompt, converted and checked now, so a bad one stops the box at start-up."""
    if not config.consent.announce:
        return {}
    return {language: load_prompt(language, location, rate=config.audio.rate,
                                  max_seconds=config.consent.max_prompt_s,
                                  level_dbfs=config.consent.prompt_level_dbfs)
            for language, location in config.consent.prompts.items()}


def vad_settings(config: Config) -> VadSettings:
    calls = config.calls
    return VadSettings(threshold_db=calls.vad_threshold_db, min_level_dbfs=calls.vad_min_level_dbfs,
                       hangover_s=calls.vad_hangover_s)


class CallLoop:
    """The call flow, the recorder and the devices, driven by one thread.

    ``inbox`` is the queue the board's drivers were given to post into
    (``build_board(config, clock, inbox.put)``); :meth:`post` is thread-safe;
    everything else runs on the thread that calls :meth:`process` / :meth:`run`.
    """

    def __init__(self, config: Config, board: Board, sink: Sink | None, clock: Clock, *,
                 inbox: queue.SimpleQueue[object] | None = None,
                 prompts: dict[str, Prompt] | None = None,
                 on_happening: Callable[[Happening], None] | None = None,
                 on_recording: Callable[[Recording], None] | None = None,
                 heartbeat: Callable[[], None] | None = None,
                 consent_note: dict[str, Any] | None = None) -> None:
        self._config = config
        self._heartbeat = heartbeat
        self._board = board
        assert board.panel is not None, "build the board with build_board()"
        self._codec = board.codec
        self._panel = board.panel
        self._clock = clock
        self.prompts = load_prompts(config) if prompts is None else prompts
        prompt = self.prompts.get(config.consent.language)
        self.flow = cf.CallFlow(policy_from(config, prompt, consent_note), clock)
        vad = vad_settings(config)
        activity = None
        if board.profile.call_detect.source == "vad":
            activity = CallActivity(config.audio.rate, start_window_s=config.calls.start_window_s,
                                    end_silence_s=config.calls.end_silence_s, vad=vad)
        self.recorder = Recorder(config.audio.rate, _Notify(sink or _NoSink(), self), vad=vad,
                                 call_activity=activity, hold_min_s=config.calls.hold_min_s)
        self._tone = warning_tone(config.audio.rate, config.consent.warning_level_dbfs)
        self._hook_sources = _HOOK_SOURCES[board.profile.call_detect.source]
        self._hid = HidCallInput() if board.profile.call_detect.source == "hid" else None
        # The drivers were built before the loop, posting into this same queue.
        self._queue: queue.SimpleQueue[object] = inbox if inbox is not None else queue.SimpleQueue()
        self._prompt_playing = False
        self._stream_t = 0.0
        self._on_happening = on_happening
        self.line_state: str | None = None
        self._status_pattern = "idle"
        # The service sets these once the fleet connection exists, before the loop runs; both are
        # called on the loop's thread: on_recording(recording), on_alarm(name, active, detail).
        self.on_recording = on_recording
        self.on_alarm: Callable[[str, bool, str], None] | None = None
        self._identify_until: float | None = None
        self._panel.show_status("idle")
        if sink is None:
            self.handle(cf.Fault(f"no central recipient or device key: {INIT_HINT}"))

    # -- input --

    def post(self, item: object) -> None:
        """Hand a driver event or an audio block to the loop (any thread)."""
        self._queue.put(item)

    def drain(self) -> None:
        """Process everything posted so far, without waiting."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            self.process(item)

    def run(self, stop: threading.Event) -> None:
        """Process posted items until ``stop`` is set or the audio ends (a None is posted)."""
        while not stop.is_set():
            try:
                item = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            if item is None:
                return
            self.process(item)

    def process(self, item: object) -> None:
        if isinstance(item, Block):
            self._on_block(item)
        elif isinstance(item, LineState) and self._hid is not None:
            self._headset_state(item)
        elif isinstance(item, LineState):
            self.line_state = item.state
            self._tell("line", f"modem {item.state}" + (f" ({item.detail})" if item.detail else ""))
            if item.state in ("lost", "ready"):
                self._alarm("modem-lost", item.state == "lost", item.detail)
        elif isinstance(item, HookChanged) and item.source not in self._hook_sources:
            logger.debug("hook event from %s ignored (this board detects calls by %s)",
                         item.source, "/".join(self._hook_sources))
        elif isinstance(item, HookChanged) and self._hid is not None and self._hid.hook(item) is None:
            logger.debug("hook event from %s ignored: the line is already %s hook", item.source,
                         "off" if item.off_hook else "on")
        elif isinstance(item, MuteChanged):
            if self._hid is not None and self._hid.mute(item):  # the call flow marks the span
                self._tell(item.source, "microphone muted" if item.muted else "microphone unmuted")
                self.handle(item)
        elif isinstance(item, _FLOW_EVENTS):
            self._tell(*_describe_input(item))
            self.handle(item)
        elif isinstance(item, Identify):
            self._identify_until = self._clock.monotonic() + item.seconds
            self._panel.show_status("identify")
            self._tell("led", f"status LED: identify for {item.seconds:g} s")
        elif isinstance(item, TestAnnouncement):
            self._test_announcement()
        elif isinstance(item, StopWhenIdle):
            idle = self.flow.call is None and self.flow.state is cf.CallState.IDLE
            if idle:
                item.stop()
            item.answer(idle)
        else:
            logger.debug("driver event not used by the call flow: %s", type(item).__name__)

    def _on_block(self, block: Block) -> None:
        self._stream_t = block.t
        for event in self.recorder.feed(block.frames):
            if isinstance(event, HookChanged):
                self._tell("vad", f"voice activity: call {'started' if event.off_hook else 'ended'}")
            self.handle(event)
        if self._prompt_playing and self._codec.play_pending() == 0:
            self._prompt_playing = False
            self.handle(cf.PromptFinished())
        self.handle(cf.Tick())
        if self._identify_until is not None and self._clock.monotonic() >= self._identify_until:
            self._identify_until = None
            self._panel.show_status(self._status_pattern)
        # Only a loop that processes audio and keeps up says it is alive (the service watchdog).
        if self._heartbeat is not None and self._queue.qsize() <= MAX_BACKLOG_BLOCKS:
            self._heartbeat()

    def handle(self, event: cf.Event) -> None:
        for action in self.flow.handle(event):
            self._execute(action)

    def finish(self) -> None:
        """End of the audio stream: hang up any call and let the recorder catch up."""
        if self.flow.call is not None:
            self.handle(HookChanged(off_hook=False, source=self._hook_sources[0]))  # type: ignore[arg-type]
            self._clock.sleep(self.flow.policy.hangup_grace_s)
            self.handle(cf.Tick())
        self.recorder.flush()

    # -- output: the only place the call flow's actions touch devices --

    def _execute(self, action: cf.Action) -> None:
        match action:
            case cf.OpenCall(call=call):
                self.recorder.open(call)
                self._tell("call", f"call {call.call_id} opened"
                           + (" (caller ID known)" if call.caller else ""))
            case cf.Keep(on=on):
                # The REC LED and the keeping of audio change in the same step.
                self.recorder.keep(on)
                self._panel.set_recording(on)
                self._tell("rec", "REC LED on: keeping audio" if on else "REC LED off: audio no longer kept")
            case cf.Pause(on=on):
                self.recorder.pause(on)
                self._panel.set_recording("paused" if on else True)
                self._tell("rec", "paused: silence is stored, REC LED blinks" if on else "resumed")
            case cf.PlayPrompt(language=language):
                prompt = self.prompts[language]
                self._codec.play(prompt.samples)
                self._prompt_playing = True
                self._tell("codec", f"announcement ({language}, {prompt.seconds:.1f} s) into the line")
            case cf.StopPrompt():
                self._codec.stop_playing()
                self._prompt_playing = False
                self._tell("codec", "announcement stopped")
            case cf.PlayWarningTone():
                self._codec.play(self._tone)
                self._tell("codec", "warning tone 1400 Hz into the line")
            case cf.Discard():
                self.recorder.discard()
                self._tell("rec", "audio kept so far destroyed")
            case cf.Indicate(pattern=pattern):
                # The call flow shows "fault" exactly when a call should be kept and cannot be.
                if (pattern == "fault") != (self._status_pattern == "fault"):
                    self._alarm("not-recording", pattern == "fault", self.flow.fault or "")
                self._status_pattern = pattern
                self._panel.show_status(pattern)
                self._tell("led", f"status LED: {pattern}")
            case cf.CloseCall(call=call):
                self.recorder.close(call)
                self._tell("call", f"call {call.call_id} closed ({call.ended_by})")
            case _:
                raise AssertionError(f"unhandled action {action!r}")

    def _test_announcement(self) -> None:
        prompt = self.prompts.get(self._config.consent.language)
        if self.flow.call is not None or prompt is None:
            logger.warning("test announcement skipped reason=%s",
                           "call in progress" if prompt is not None else "no prompt configured")
            return
        self._codec.play(prompt.samples)
        self._tell("codec", f"test announcement ({prompt.seconds:.1f} s) into the line, not recorded")

    def _headset_state(self, item: LineState) -> None:
        """The USB headset (this board's line) went away or came back.

        Lost: the call in progress is closed as a device loss (what was kept stays), the alarm
        raised, nothing is kept until it returns; back: the alarm cleared, the next call recorded.
        """
        assert self._hid is not None
        self.line_state = item.state
        self._tell("hid-headset", f"headset {item.state}" + (f" ({item.detail})" if item.detail else ""))
        if item.state == "lost":
            self._alarm("headset-lost", True, item.detail)
            self.handle(cf.Fault(f"{HEADSET_GONE}: {item.detail or 'unplugged'}"))
            if self._hid.off_hook:
                self._hid.off_hook = False
                self.handle(HookChanged(off_hook=False, source="hid-headset"))
        elif item.state == "ready":
            self._alarm("headset-lost", False, item.detail)
            if (self.flow.fault or "").startswith(HEADSET_GONE):  # another fault (no key, spool full) stays
                self.handle(cf.FaultCleared())

    def _alarm(self, name: str, active: bool, detail: str) -> None:
        logger.log(logging.WARNING if active else logging.INFO, "alarm %s name=%s detail=%s",
                   "raised" if active else "cleared", name, detail)
        if self.on_alarm is not None:
            self.on_alarm(name, active, detail)

    def _tell(self, device: str, what: str) -> None:
        happening = Happening(round(self._stream_t, 3), device, what)
        logger.info("t=%.3f device=%s %s", happening.t, device, what)
        if self._on_happening is not None:
            self._on_happening(happening)

    def _recorded(self, recording: Recording) -> None:
        if self.on_recording is not None:
            self.on_recording(recording)


class _Notify:
    """A sink wrapper that also tells the loop when a recording is complete."""

    def __init__(self, sink: Sink, loop: CallLoop) -> None:
        self._sink, self._loop = sink, loop

    def open(self, call: cf.CallRecord) -> None:
        self._sink.open(call)

    def write(self, frames: np.ndarray) -> None:
        self._sink.write(frames)

    def discard(self) -> None:
        self._sink.discard()

    def close(self, recording: Recording) -> None:
        self._sink.close(recording)
        self._loop._recorded(recording)


def _describe_input(event: object) -> tuple[str, str]:
    match event:
        case Ring():
            return "line", "RING"
        case CallerId():
            return "line", "caller ID received"
        case HookChanged(off_hook=off_hook, source=source):
            return source, "handset off hook" if off_hook else "handset on hook"
        case ButtonPressed(button=button, long=long):
            return "button", f"{button.upper()} {'long' if long else 'short'} press"
    return "?", type(event).__name__
