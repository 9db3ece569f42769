"""The call state machine: one table, events in, actions out.

::

    idle ──Ring──► ringing ──hook off──► connected ──(policy)──► announcing
      ▲                                      │                      │ prompt finished
      │                                      └──far speech/timeout──┤
      │                                                             ▼
      └──── CloseCall ◄──hook on (after grace)─── recording ⇄ paused
                ▲                                     │ opt-out key / private / fault
                └──────────────────────────────── unrecorded

It is sans-IO: it never touches a device, a file or a thread. The app feeds
it events (hook, buttons, modem, detector results, ``Tick`` on every audio
block) and carries out the actions it returns. Time comes from the injected
clock.

Every transition is in :data:`TABLE`: (state, event type) -> :class:`Row`,
a handler and the next state. A handler only produces actions and updates
the call's record; when its outcome decides where the machine goes (a timer
fell due, which button was pressed), it returns an outcome name and the
row's ``unless`` maps that name to the next state. :meth:`CallFlow.handle`
alone sets the state and alone counts what is unexpected: a pair not in the
table, or a handler's :data:`UNEXPECTED` (a second hook-off without a
hook-on); it is logged, never raised, and changes nothing. There is no
"ended" state: a call ends in the step that hands out :class:`CloseCall`
and goes to idle (or to ringing, when a RING ended it).

Two rules the table keeps, because compliance depends on them:

- Audio is kept only between ``Keep(True)`` and ``Keep(False)``; the app turns
  the REC LED on and off in the same step, so the LED cannot say "not
  recording" while audio is kept.
- Recording starts with the announcement (the announcement is itself
  recorded as proof that it played), never before it, unless the site's
  policy turns the announcement off.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from enum import Enum
from typing import Any, NamedTuple

from linetap.drivers.events import ButtonPressed, CallerId, HookChanged, MuteChanged, Ring
# Events, actions, the policy and the call's record live beside this module; the flow's users may
# name them through it (``callflow.Tick``, ``callflow.CallPolicy``, ``callflow.CallRecord``).
from linetap.firmware.callevents import (Action, CallPolicy, CloseCall, Discard, DtmfDetected, Event, FarSpeech,
                                         Fault, FaultCleared, Indicate, Keep, OpenCall, Pause, PlayPrompt,
                                         PlayWarningTone, PromptFinished, StopPrompt, Tick)
from linetap.firmware.callrecord import CallEvent, CallRecord, uuid7
from linetap.firmware.clock import Clock

logger = logging.getLogger(__name__)


class CallState(Enum):
    IDLE = "idle"
    RINGING = "ringing"
    CONNECTED = "connected"
    ANNOUNCING = "announcing"
    RECORDING = "recording"
    PAUSED = "paused"
    UNRECORDED = "unrecorded"  # a call is on, and by choice or fault nothing is kept


KEEPING = (CallState.ANNOUNCING, CallState.RECORDING, CallState.PAUSED)


# ---------------------------------------------------------------- machine --

Outcome = str | None
"""What a handler reports: None for its row's next state, or a name the row's ``unless`` maps."""

UNEXPECTED = "unexpected"
"""The outcome of a handler whose row takes the event type but not this case: counted, changes nothing."""


class CallFlow:
    """The call state machine. Not thread-safe: one thread feeds it (the app's call thread)."""

    def __init__(self, policy: CallPolicy, clock: Clock,
                 new_call_id: Callable[[], str] = uuid7) -> None:
        self.policy = policy
        self._clock = clock
        self._new_call_id = new_call_id
        self.state = CallState.IDLE
        self.call: CallRecord | None = None
        self.unexpected = 0
        self.fault: str | None = None
        self._private_armed = False
        self._muted: str | None = None  # the source that muted the agent's microphone, while muted
        self._mute_open = False  # the call's record has a mute span not yet ended
        self._pending_caller: tuple[float, CallerId] | None = None
        self._on_hook_at = 0.0
        self._deadline: dict[str, float] = {}
        self._actions: list[Action] = []

    # -- the one entry point, and the one place the state changes --

    def handle(self, event: Event) -> list[Action]:
        """Apply one event; return what the app must do, in order."""
        self._actions = []
        row = TABLE.get((self.state, type(event)))
        outcome = UNEXPECTED if row is None else row.handler(self, event)
        if row is None or outcome == UNEXPECTED:
            self.unexpected += 1
            logger.warning("callflow unexpected event=%s state=%s count=%d",
                           type(event).__name__, self.state.value, self.unexpected)
            return []
        self.state = row.to if outcome is None else row.unless[outcome]
        return self._actions

    # -- helpers the handlers share --

    def _now(self) -> float:
        return self._clock.monotonic()

    def _do(self, *actions: Action) -> None:
        self._actions.extend(actions)

    def _note(self, kind: str, at: float | None = None, **detail: Any) -> None:
        assert self.call is not None
        t = round((self._now() if at is None else at) - self.call.started_mono, 3)
        self.call = replace(self.call, events=self.call.events + (CallEvent(t, kind, detail),))

    def _due(self, name: str) -> bool:
        deadline = self._deadline.get(name)
        if deadline is not None and self._now() >= deadline:
            del self._deadline[name]
            return True
        return False

    def _take_caller(self) -> CallerId | None:
        if self._pending_caller is None:
            return None
        at, caller = self._pending_caller
        self._pending_caller = None
        return caller if self._now() - at <= self.policy.caller_id_max_age_s else None

    def _keep(self, on: bool) -> None:
        self._do(Keep(on))
        if on:
            assert self.call is not None
            self.call = replace(self.call, recorded=True)

    def _announce(self, reason: str = "connect") -> None:
        self._keep(True)
        self._do(PlayPrompt(self.policy.language))
        self._note("announcement-start", language=self.policy.language,
                   prompt_sha256=self.policy.prompt_sha256, trigger=reason)
        if self.policy.opt_out_key:
            self._deadline["opt-out"] = self._now() + self.policy.opt_out_window_s

    def _arm_warning_tone(self) -> None:
        if self.policy.warning_tone:
            self._deadline["tone"] = self._now() + self.policy.warning_interval_s

    def _go_unrecorded(self, kind: str, *, discard: bool = False, **detail: Any) -> None:
        if self.state == CallState.ANNOUNCING:
            self._do(StopPrompt())
        if self.state in KEEPING:
            self._keep(False)
        assert self.call is not None
        if discard and self.call.recorded:
            self._do(Discard())
            self.call = replace(self.call, recorded=False)
        self._note(kind, **detail)
        self._deadline.pop("tone", None)
        self._do(Indicate("fault" if kind == "fault" else "private"))

    def _flag(self, event: ButtonPressed) -> None:
        assert self.call is not None
        if not self.call.flagged:
            self.call = replace(self.call, flagged=True)
        self._note("flag", long=event.long)

    def _hangup_due(self) -> bool:
        if not self._due("hangup"):
            return False
        self._end_call("hang-up", at=self._on_hook_at)
        return True

    def _end_call(self, ended_by: str, at: float) -> None:
        assert self.call is not None
        if self.state == CallState.ANNOUNCING:
            self._do(StopPrompt())
        if self.state == CallState.PAUSED:
            self._note("pause-end", at=at)
        self._mute_span(False, at=at, source="call-end")
        if self.state in KEEPING:
            self._keep(False)
        self._note("call-end", at=at, ended_by=ended_by)
        self.call = replace(self.call, ended_by=ended_by, ended_mono=at)
        self._do(CloseCall(self.call), Indicate("fault" if self.fault else "idle"))
        self.call = None
        self._deadline.clear()

    # -- handlers: idle and ringing --

    def _ignore(self, event: Event) -> Outcome:
        """An event that is expected in this state and changes nothing."""
        return None

    def _ring(self, event: Ring) -> Outcome:
        self._deadline["ring"] = self._now() + self.policy.ring_timeout_s
        return None

    def _caller_before_call(self, event: CallerId) -> Outcome:
        self._pending_caller = (self._now(), event)
        return None

    def _ring_tick(self, event: Tick) -> Outcome:
        if not self._due("ring"):
            return None
        logger.info("callflow missed call (no answer)")
        self._pending_caller = None
        return "missed"

    def _toggle_private(self, event: ButtonPressed) -> Outcome:
        if event.button == "pause" and event.long:
            self._private_armed = not self._private_armed
            logger.info("callflow private_next_call=%s", self._private_armed)
            self._do(Indicate("private" if self._private_armed else "idle"))
        return None

    def _set_fault(self, event: Fault) -> Outcome:
        self.fault = event.reason
        self._do(Indicate("fault"))
        return None

    def _clear_fault(self, event: FaultCleared) -> Outcome:
        self.fault = None
        if self.call is None:  # in a call, the fault's indicator stays until the call ends
            self._do(Indicate("private" if self._private_armed else "idle"))
        return None

    def _hook_while_idle(self, event: HookChanged) -> Outcome:
        return self._start_call(event) if event.off_hook else None

    def _start_call(self, event: HookChanged) -> Outcome:
        now = self._now()
        self._deadline.clear()
        self.call = CallRecord(call_id=self._new_call_id(), started_mono=now,
                               started_wall=self._clock.wall(),
                               clock_synced=self._clock.synced(), caller=self._take_caller())
        self._do(OpenCall(self.call))
        self._note("call-start", source=event.source)
        if self.policy.fleet_consent:
            self._note("policy", source="fleet", changed=list(self.policy.fleet_consent),
                       config_version=self.policy.config_version)
        self._mute_open = False
        if self._muted:  # muted before the call: the span starts with it
            self._mute_span(True, source=self._muted)
        if self._private_armed:
            self._private_armed = False
            self._go_unrecorded("private", by="agent", when="before-call")
            return "unrecorded"
        if self.fault is not None:
            self._go_unrecorded("fault", reason=self.fault)
            return "unrecorded"
        if not self.policy.announce:
            self._keep(True)
            self._arm_warning_tone()
            return "record"
        if self.policy.announce_when == "far-speech":
            self._deadline["far-speech"] = now + self.policy.far_speech_wait_s
            return "wait"
        self._announce()
        return "announce"

    # -- handlers: in a call --

    def _far_speech(self, event: FarSpeech) -> Outcome:
        self._deadline.pop("far-speech", None)
        self._announce("far-speech")
        return None

    def _connected_tick(self, event: Tick) -> Outcome:
        if self._hangup_due():
            return "hang-up"
        if self._due("far-speech"):
            self._announce("far-speech-timeout")
            return "announce"
        return None

    def _prompt_finished(self, event: PromptFinished) -> Outcome:
        self._note("announcement-end")
        if self.state == CallState.ANNOUNCING:  # recording starts: the warning tone with it
            self._arm_warning_tone()
        return None

    def _keeping_tick(self, event: Tick) -> Outcome:
        if self._hangup_due():
            return "hang-up"
        self._due("opt-out")  # the window closes quietly
        if self._due("tone"):  # armed only while recording
            self._do(PlayWarningTone())
            self._note("warning-tone")
            self._arm_warning_tone()
        return None

    def _unrecorded_tick(self, event: Tick) -> Outcome:
        return "hang-up" if self._hangup_due() else None

    def _dtmf(self, event: DtmfDetected) -> Outcome:
        if (self.policy.opt_out_key is None or event.digit != self.policy.opt_out_key
                or "opt-out" not in self._deadline):
            return None
        self._go_unrecorded("opt-out", discard=True, by="caller", channel=event.channel)
        return "opt-out"

    def _button_in_call(self, event: ButtonPressed) -> Outcome:
        """Flag, or a long press: private from here on (what was kept is destroyed)."""
        if event.button == "flag":
            self._flag(event)
        elif event.long:
            self._go_unrecorded("private", discard=True, by="agent", when="during-call")
            return "private"
        return None

    def _button_recording(self, event: ButtonPressed) -> Outcome:
        if event.button == "flag" or event.long:
            return self._button_in_call(event)
        self._do(Pause(True))
        self._note("pause-start")
        self._deadline.pop("tone", None)
        return "pause"

    def _button_paused(self, event: ButtonPressed) -> Outcome:
        if event.button == "flag" or event.long:
            return self._button_in_call(event)
        self._do(Pause(False))
        self._note("pause-end")
        self._arm_warning_tone()
        return "resume"

    def _button_unrecorded(self, event: ButtonPressed) -> Outcome:
        if event.button == "flag":
            self._flag(event)
        return None

    def _caller_in_call(self, event: CallerId) -> Outcome:
        if "hangup" in self._deadline:  # the handset is down: this belongs to the next call
            self._pending_caller = (self._now(), event)
            return None
        assert self.call is not None
        self.call = replace(self.call, caller=event)
        self._note("caller-id-received")
        return None

    def _ring_in_call(self, event: Ring) -> Outcome:
        # A ring while the handset is down ends the call at once: the grace
        # period is for flashes and bounces, and a new call is arriving.
        if self._deadline.pop("hangup", None) is None:
            return None
        self._end_call("hang-up", at=self._on_hook_at)
        self._ring(event)
        return "next-call"

    def _fault_in_call(self, event: Fault) -> Outcome:
        self.fault = event.reason
        if self.state != CallState.UNRECORDED:
            self._go_unrecorded("fault", reason=event.reason)
        return None

    def _mute(self, event: MuteChanged) -> Outcome:
        """Mute marks a span like a pause, but keeping goes on: what the far end did not hear is evidence."""
        if event.muted != bool(self._muted):
            self._muted = event.source if event.muted else None
            if self.call is not None and "hangup" not in self._deadline:  # in the hang-up grace: after the call
                self._mute_span(event.muted, source=event.source)
        return None

    def _mute_span(self, on: bool, at: float | None = None, **detail: Any) -> None:
        if on != self._mute_open:
            self._mute_open = on
            self._note("mute-start" if on else "mute-end", at=at, **detail)

    def _hook_in_call(self, event: HookChanged) -> Outcome:
        if event.off_hook:
            if self._deadline.pop("hangup", None) is None:
                return UNEXPECTED  # two hook-offs without a hook-on
            self._note("hook-flash")
            self._mute_span(bool(self._muted), source=self._muted or "hook-flash")  # changed in the flash?
        elif "hangup" not in self._deadline:
            self._on_hook_at = self._now()
            self._deadline["hangup"] = self._on_hook_at + self.policy.hangup_grace_s
        return None


# ------------------------------------------------------------------ table --

class Row(NamedTuple):
    """One transition: run ``handler``, then go to ``to``, or to ``unless[outcome]`` when it returns one."""

    handler: Callable[[CallFlow, Any], Outcome]
    to: CallState
    unless: Mapping[str, CallState] = {}


_S, _H = CallState, CallFlow
# The guarded alternatives, by the outcome that picks them.
OPENING = {"unrecorded": _S.UNRECORDED, "record": _S.RECORDING, "wait": _S.CONNECTED,
           "announce": _S.ANNOUNCING}
HANG_UP = {"hang-up": _S.IDLE}
NEXT_CALL = {"next-call": _S.RINGING}  # a RING while the handset is down ended the call
TO_UNRECORDED = {"private": _S.UNRECORDED, "opt-out": _S.UNRECORDED}

#: Every known (state, event type) pair. Pairs not here are unexpected.
TABLE: dict[tuple[CallState, type], Row] = {
    (_S.IDLE, Ring): Row(_H._ring, _S.RINGING),
    (_S.IDLE, CallerId): Row(_H._caller_before_call, _S.IDLE),
    (_S.IDLE, HookChanged): Row(_H._hook_while_idle, _S.IDLE, OPENING),
    (_S.IDLE, ButtonPressed): Row(_H._toggle_private, _S.IDLE),
    (_S.IDLE, Tick): Row(_H._ignore, _S.IDLE),
    (_S.IDLE, FarSpeech): Row(_H._ignore, _S.IDLE),
    (_S.IDLE, DtmfDetected): Row(_H._ignore, _S.IDLE),
    (_S.IDLE, PromptFinished): Row(_H._ignore, _S.IDLE),  # a test announcement played outside a call
    (_S.IDLE, Fault): Row(_H._set_fault, _S.IDLE),
    (_S.IDLE, FaultCleared): Row(_H._clear_fault, _S.IDLE),

    (_S.RINGING, Ring): Row(_H._ring, _S.RINGING),
    (_S.RINGING, CallerId): Row(_H._caller_before_call, _S.RINGING),
    (_S.RINGING, HookChanged): Row(_H._hook_while_idle, _S.RINGING, OPENING),
    (_S.RINGING, ButtonPressed): Row(_H._toggle_private, _S.RINGING),
    (_S.RINGING, Tick): Row(_H._ring_tick, _S.RINGING, {"missed": _S.IDLE}),
    (_S.RINGING, FarSpeech): Row(_H._ignore, _S.RINGING),
    (_S.RINGING, DtmfDetected): Row(_H._ignore, _S.RINGING),
    (_S.RINGING, PromptFinished): Row(_H._ignore, _S.RINGING),
    (_S.RINGING, Fault): Row(_H._set_fault, _S.RINGING),
    (_S.RINGING, FaultCleared): Row(_H._clear_fault, _S.RINGING),

    (_S.CONNECTED, FarSpeech): Row(_H._far_speech, _S.ANNOUNCING),
    (_S.CONNECTED, Tick): Row(_H._connected_tick, _S.CONNECTED, {**HANG_UP, "announce": _S.ANNOUNCING}),
    (_S.CONNECTED, HookChanged): Row(_H._hook_in_call, _S.CONNECTED),
    (_S.CONNECTED, ButtonPressed): Row(_H._button_in_call, _S.CONNECTED, TO_UNRECORDED),
    (_S.CONNECTED, CallerId): Row(_H._caller_in_call, _S.CONNECTED),
    (_S.CONNECTED, DtmfDetected): Row(_H._ignore, _S.CONNECTED),  # no announcement yet, no opt-out window
    (_S.CONNECTED, Ring): Row(_H._ring_in_call, _S.CONNECTED, NEXT_CALL),
    (_S.CONNECTED, PromptFinished): Row(_H._ignore, _S.CONNECTED),
    (_S.CONNECTED, Fault): Row(_H._fault_in_call, _S.UNRECORDED),
    (_S.CONNECTED, FaultCleared): Row(_H._clear_fault, _S.CONNECTED),

    (_S.ANNOUNCING, PromptFinished): Row(_H._prompt_finished, _S.RECORDING),
    (_S.ANNOUNCING, Tick): Row(_H._keeping_tick, _S.ANNOUNCING, HANG_UP),
    (_S.ANNOUNCING, DtmfDetected): Row(_H._dtmf, _S.ANNOUNCING, TO_UNRECORDED),
    (_S.ANNOUNCING, HookChanged): Row(_H._hook_in_call, _S.ANNOUNCING),
    (_S.ANNOUNCING, ButtonPressed): Row(_H._button_in_call, _S.ANNOUNCING, TO_UNRECORDED),
    (_S.ANNOUNCING, CallerId): Row(_H._caller_in_call, _S.ANNOUNCING),
    (_S.ANNOUNCING, FarSpeech): Row(_H._ignore, _S.ANNOUNCING),
    (_S.ANNOUNCING, Ring): Row(_H._ring_in_call, _S.ANNOUNCING, NEXT_CALL),
    (_S.ANNOUNCING, Fault): Row(_H._fault_in_call, _S.UNRECORDED),
    (_S.ANNOUNCING, FaultCleared): Row(_H._clear_fault, _S.ANNOUNCING),

    (_S.RECORDING, Tick): Row(_H._keeping_tick, _S.RECORDING, HANG_UP),
    (_S.RECORDING, DtmfDetected): Row(_H._dtmf, _S.RECORDING, TO_UNRECORDED),
    (_S.RECORDING, HookChanged): Row(_H._hook_in_call, _S.RECORDING),
    (_S.RECORDING, ButtonPressed): Row(_H._button_recording, _S.RECORDING,
                                       {**TO_UNRECORDED, "pause": _S.PAUSED}),
    (_S.RECORDING, CallerId): Row(_H._caller_in_call, _S.RECORDING),
    (_S.RECORDING, FarSpeech): Row(_H._ignore, _S.RECORDING),
    (_S.RECORDING, Ring): Row(_H._ring_in_call, _S.RECORDING, NEXT_CALL),
    (_S.RECORDING, PromptFinished): Row(_H._ignore, _S.RECORDING),
    (_S.RECORDING, Fault): Row(_H._fault_in_call, _S.UNRECORDED),
    (_S.RECORDING, FaultCleared): Row(_H._clear_fault, _S.RECORDING),

    (_S.PAUSED, Tick): Row(_H._keeping_tick, _S.PAUSED, HANG_UP),
    (_S.PAUSED, DtmfDetected): Row(_H._dtmf, _S.PAUSED, TO_UNRECORDED),
    (_S.PAUSED, HookChanged): Row(_H._hook_in_call, _S.PAUSED),
    (_S.PAUSED, ButtonPressed): Row(_H._button_paused, _S.PAUSED, {**TO_UNRECORDED, "resume": _S.RECORDING}),
    (_S.PAUSED, CallerId): Row(_H._caller_in_call, _S.PAUSED),
    (_S.PAUSED, PromptFinished): Row(_H._prompt_finished, _S.PAUSED),
    (_S.PAUSED, FarSpeech): Row(_H._ignore, _S.PAUSED),
    (_S.PAUSED, Ring): Row(_H._ring_in_call, _S.PAUSED, NEXT_CALL),
    (_S.PAUSED, Fault): Row(_H._fault_in_call, _S.UNRECORDED),
    (_S.PAUSED, FaultCleared): Row(_H._clear_fault, _S.PAUSED),

    (_S.UNRECORDED, Tick): Row(_H._unrecorded_tick, _S.UNRECORDED, HANG_UP),
    (_S.UNRECORDED, HookChanged): Row(_H._hook_in_call, _S.UNRECORDED),
    (_S.UNRECORDED, ButtonPressed): Row(_H._button_unrecorded, _S.UNRECORDED),
    (_S.UNRECORDED, CallerId): Row(_H._caller_in_call, _S.UNRECORDED),
    (_S.UNRECORDED, DtmfDetected): Row(_H._ignore, _S.UNRECORDED),
    (_S.UNRECORDED, FarSpeech): Row(_H._ignore, _S.UNRECORDED),
    (_S.UNRECORDED, PromptFinished): Row(_H._ignore, _S.UNRECORDED),
    (_S.UNRECORDED, Ring): Row(_H._ring_in_call, _S.UNRECORDED, NEXT_CALL),
    (_S.UNRECORDED, Fault): Row(_H._fault_in_call, _S.UNRECORDED),
    (_S.UNRECORDED, FaultCleared): Row(_H._clear_fault, _S.UNRECORDED),
}
# Mute moves no state anywhere: it marks a span in the call's record (or waits for the next call).
TABLE.update({(state, MuteChanged): Row(_H._mute, state) for state in CallState})
