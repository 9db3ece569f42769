"""The call state machine: one table, events in, actions out.

::

    idle ──Ring──► ringing ──hook off──► connected ──(policy)──► announcing
      ▲                                      │                      │ prompt finished
      │                                      └──far speech/timeout──┤
      │                                                             ▼
      └──────────── ended ◄──hook on (after grace)── recording ⇄ paused
                      ▲                                   │ opt-out key / private / fault
                      └──────────────────────────── unrecorded

It is sans-IO: it never touches a device, a file or a thread. The app feeds
it events (hook, buttons, modem, detector results, ``Tick`` on every audio
block) and carries out the actions it returns. Time comes from the injected
clock. Every (state, event) pair the machine knows is in :data:`TABLE`; any
other pair is counted in :attr:`CallFlow.unexpected` and logged, and changes
nothing.

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
import os
import time
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any, Callable, Literal

from linetap.drivers.events import ButtonPressed, CallerId, HookChanged, Ring
from linetap.firmware.clock import Clock

logger = logging.getLogger(__name__)


class State(Enum):
    IDLE = "idle"
    RINGING = "ringing"
    CONNECTED = "connected"
    ANNOUNCING = "announcing"
    RECORDING = "recording"
    PAUSED = "paused"
    UNRECORDED = "unrecorded"  # a call is on, and by choice or fault nothing is kept
    ENDED = "ended"  # passed through when a call closes; the machine then rests in IDLE


IN_CALL = (State.CONNECTED, State.ANNOUNCING, State.RECORDING, State.PAUSED, State.UNRECORDED)
KEEPING = (State.ANNOUNCING, State.RECORDING, State.PAUSED)


# ---------------------------------------------------------------- policy --

@dataclass(frozen=True)
class CallPolicy:
    """What a site decided about consent and call timing (from the config's consent section)."""

    announce: bool = True
    announce_when: Literal["connect", "far-speech"] = "connect"
    far_speech_wait_s: float = 8.0  # announce anyway if the far end stays silent this long
    prompt_sha256: str = ""  # of the prompt as played, recorded as proof
    language: str = "en"
    warning_tone: bool = True
    warning_interval_s: float = 15.0
    opt_out_key: str | None = None  # DTMF key a caller presses to refuse recording
    opt_out_window_s: float = 30.0  # from the announcement's start
    ring_timeout_s: float = 8.0  # no RING for this long: the call was missed
    hangup_grace_s: float = 0.8  # an on-hook shorter than this is a flash or a bounce, not a hang-up
    caller_id_max_age_s: float = 20.0  # caller ID older than this belongs to no call
    # Consent keys a fleet push set over the site's own file, and that config's version: every call
    # then opens with a "policy" event naming them (see linetap.sync.pushpolicy).
    fleet_consent: tuple[str, ...] = ()
    config_version: int = 0


# ---------------------------------------------------------------- events --

@dataclass(frozen=True)
class Tick:
    """Time passed (the app sends one per audio block); timers are checked against the clock."""


@dataclass(frozen=True)
class FarSpeech:
    """Voice activity started on the far-end channel."""


@dataclass(frozen=True)
class PromptFinished:
    """The last sample of the announcement was handed to the codec."""


@dataclass(frozen=True)
class DtmfDetected:
    """Our detector heard a DTMF digit on a channel (the digit is never stored)."""

    digit: str
    channel: Literal["near", "far"]


@dataclass(frozen=True)
class Fault:
    """Audio cannot be kept (no recipient key, spool full, device fault)."""

    reason: str


@dataclass(frozen=True)
class FaultCleared:
    """The fault that stopped keeping audio is gone (it applies from the next call)."""


Event = Ring | CallerId | HookChanged | ButtonPressed | Tick | FarSpeech | PromptFinished \
    | DtmfDetected | Fault | FaultCleared


# ------------------------------------------------------------ call record --

@dataclass(frozen=True)
class CallEvent:
    """One line of a call's event log; ``t`` is seconds since the call started."""

    t: float
    kind: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CallRecord:
    """What is known about a call. ``caller`` is personal data: never logged in clear."""

    call_id: str
    started_mono: float
    started_wall: float
    clock_synced: bool
    caller: CallerId | None = None
    flagged: bool = False
    recorded: bool = False  # some audio was kept and not discarded
    ended_by: str | None = None
    ended_mono: float | None = None
    events: tuple[CallEvent, ...] = ()

    @property
    def caller_withheld(self) -> str | None:
        """Why the caller's number (or name) was not delivered: ``private``, ``out-of-area``...

        Plain, not personal data: the manifest and the central index carry it unsealed.
        """
        return None if self.caller is None else self.caller.reason_withheld


# --------------------------------------------------------------- actions --

@dataclass(frozen=True)
class OpenCall:
    call: CallRecord


@dataclass(frozen=True)
class PlayPrompt:
    language: str


@dataclass(frozen=True)
class StopPrompt:
    pass


@dataclass(frozen=True)
class PlayWarningTone:
    pass


@dataclass(frozen=True)
class Keep:
    """Start (True) or stop (False) keeping audio. The REC LED follows in the same step."""

    on: bool


@dataclass(frozen=True)
class Pause:
    """Pause (True) or resume (False) keeping: a paused span is stored as silence."""

    on: bool


@dataclass(frozen=True)
class Discard:
    """Destroy everything kept of the current call (opt-out, private call)."""


@dataclass(frozen=True)
class Indicate:
    """Show a status pattern that no Keep/Pause already implies (fault, private)."""

    pattern: str


@dataclass(frozen=True)
class CloseCall:
    call: CallRecord


Action = OpenCall | PlayPrompt | StopPrompt | PlayWarningTone | Keep | Pause | Discard \
    | Indicate | CloseCall


def uuid7() -> str:
    """A time-ordered UUID (RFC 9562 version 7): recordings sort by id as they sort by time."""
    ms = time.time_ns() // 1_000_000
    value = (ms & ((1 << 48) - 1)) << 80 | int.from_bytes(os.urandom(10), "big") & ((1 << 80) - 1)
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # variant
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


# ---------------------------------------------------------------- machine --

class CallFlow:
    """The call state machine. Not thread-safe: one thread feeds it (the app's call thread)."""

    def __init__(self, policy: CallPolicy, clock: Clock,
                 new_call_id: Callable[[], str] = uuid7) -> None:
        self.policy = policy
        self._clock = clock
        self._new_call_id = new_call_id
        self.state = State.IDLE
        self.call: CallRecord | None = None
        self.unexpected = 0
        self.fault: str | None = None
        self._private_armed = False
        self._pending_caller: tuple[float, CallerId] | None = None
        self._on_hook_at = 0.0
        self._deadline: dict[str, float] = {}
        self._actions: list[Action] = []

    # -- the one entry point --

    def handle(self, event: Event) -> list[Action]:
        """Apply one event; return what the app must do, in order."""
        handler = TABLE.get((self.state, _kind(event)))
        self._actions = []
        if handler is None:
            self.unexpected += 1
            logger.warning("callflow unexpected event=%s state=%s count=%d",
                           type(event).__name__, self.state.value, self.unexpected)
            return []
        if handler is not _ignore:
            handler(self, event)
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

    # -- idle and ringing --

    def _ring(self, event: Ring) -> None:
        self._deadline["ring"] = self._now() + self.policy.ring_timeout_s
        self.state = State.RINGING

    def _caller_before_call(self, event: CallerId) -> None:
        self._pending_caller = (self._now(), event)

    def _ring_tick(self, event: Tick) -> None:
        if self._due("ring"):
            logger.info("callflow missed call (no answer)")
            self._pending_caller = None
            self.state = State.IDLE

    def _toggle_private(self, event: ButtonPressed) -> None:
        if event.button != "pause" or not event.long:
            return
        self._private_armed = not self._private_armed
        logger.info("callflow private_next_call=%s", self._private_armed)
        self._do(Indicate("private" if self._private_armed else "idle"))

    def _set_fault(self, event: Fault) -> None:
        self.fault = event.reason
        self._do(Indicate("fault"))

    def _clear_fault(self, event: FaultCleared) -> None:
        self.fault = None
        if self.call is None:  # in a call, the fault's indicator stays until the call ends
            self._do(Indicate("private" if self._private_armed else "idle"))

    def _hook_while_idle(self, event: HookChanged) -> None:
        if event.off_hook:
            self._start_call(event)

    def _start_call(self, event: HookChanged) -> None:
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
        if self._private_armed:
            self._private_armed = False
            self._go_unrecorded("private", by="agent", when="before-call")
        elif self.fault is not None:
            self._go_unrecorded("fault", reason=self.fault)
        elif not self.policy.announce:
            self._start_recording()
        elif self.policy.announce_when == "far-speech":
            self._deadline["far-speech"] = now + self.policy.far_speech_wait_s
            self.state = State.CONNECTED
        else:
            self._announce()

    # -- in a call --

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
        self.state = State.ANNOUNCING

    def _start_recording(self) -> None:
        if self.state not in KEEPING:
            self._keep(True)
        self._arm_warning_tone()
        self.state = State.RECORDING

    def _arm_warning_tone(self) -> None:
        if self.policy.warning_tone:
            self._deadline["tone"] = self._now() + self.policy.warning_interval_s

    def _go_unrecorded(self, kind: str, *, discard: bool = False, **detail: Any) -> None:
        if self.state == State.ANNOUNCING:
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
        self.state = State.UNRECORDED

    def _far_speech(self, event: FarSpeech) -> None:
        self._deadline.pop("far-speech", None)
        self._announce("far-speech")

    def _connected_tick(self, event: Tick) -> None:
        if self._hangup_due():
            return
        if self._due("far-speech"):
            self._announce("far-speech-timeout")

    def _prompt_finished(self, event: PromptFinished) -> None:
        self._note("announcement-end")
        if self.state == State.ANNOUNCING:
            self._start_recording()

    def _keeping_tick(self, event: Tick) -> None:
        if self._hangup_due():
            return
        self._due("opt-out")  # the window closes quietly
        if self.state == State.RECORDING and self._due("tone"):
            self._do(PlayWarningTone())
            self._note("warning-tone")
            self._arm_warning_tone()

    def _unrecorded_tick(self, event: Tick) -> None:
        self._hangup_due()

    def _dtmf(self, event: DtmfDetected) -> None:
        if (self.policy.opt_out_key is not None and event.digit == self.policy.opt_out_key
                and "opt-out" in self._deadline):
            self._go_unrecorded("opt-out", discard=True, by="caller", channel=event.channel)

    def _button_in_call(self, event: ButtonPressed) -> None:
        assert self.call is not None
        if event.button == "flag":
            if not self.call.flagged:
                self.call = replace(self.call, flagged=True)
            self._note("flag", long=event.long)
        elif event.long:
            if self.state != State.UNRECORDED:
                self._go_unrecorded("private", discard=True, by="agent", when="during-call")
        elif self.state == State.RECORDING:
            self._do(Pause(True))
            self._note("pause-start")
            self._deadline.pop("tone", None)
            self.state = State.PAUSED
        elif self.state == State.PAUSED:
            self._do(Pause(False))
            self._note("pause-end")
            self._arm_warning_tone()
            self.state = State.RECORDING

    def _caller_in_call(self, event: CallerId) -> None:
        if "hangup" in self._deadline:  # the handset is down: this belongs to the next call
            self._pending_caller = (self._now(), event)
            return
        assert self.call is not None
        self.call = replace(self.call, caller=event)
        self._note("caller-id-received")

    def _ring_in_call(self, event: Ring) -> None:
        # A ring while the handset is down ends the call at once: the grace
        # period is for flashes and bounces, and a new call is arriving.
        if "hangup" in self._deadline:
            self._deadline.pop("hangup")
            self._end_call("hang-up", at=self._on_hook_at)
            self._ring(event)

    def _fault_in_call(self, event: Fault) -> None:
        self.fault = event.reason
        if self.state != State.UNRECORDED:
            self._go_unrecorded("fault", reason=event.reason)

    def _hook_in_call(self, event: HookChanged) -> None:
        if event.off_hook:
            if self._deadline.pop("hangup", None) is not None:
                self._note("hook-flash")
            else:
                self.unexpected += 1  # two hook-offs without a hook-on
                logger.warning("callflow hook-off while already off hook count=%d", self.unexpected)
        elif "hangup" not in self._deadline:
            self._on_hook_at = self._now()
            self._deadline["hangup"] = self._on_hook_at + self.policy.hangup_grace_s

    def _hangup_due(self) -> bool:
        if not self._due("hangup"):
            return False
        self._end_call("hang-up", at=self._on_hook_at)
        return True

    def _end_call(self, ended_by: str, at: float) -> None:
        assert self.call is not None
        if self.state == State.ANNOUNCING:
            self._do(StopPrompt())
        if self.state == State.PAUSED:
            self._note("pause-end", at=at)
        if self.state in KEEPING:
            self._keep(False)
        self.state = State.ENDED
        self._note("call-end", at=at, ended_by=ended_by)
        self.call = replace(self.call, ended_by=ended_by, ended_mono=at)
        self._do(CloseCall(self.call), Indicate("fault" if self.fault else "idle"))
        self.call = None
        self._deadline.clear()
        self.state = State.IDLE


def _ignore(flow: CallFlow, event: Event) -> None:
    """An event that is expected in this state and changes nothing."""


def _kind(event: Event) -> type:
    return type(event)


_S = State
_H = CallFlow
#: Every known (state, event) pair and its handler. Pairs not here are unexpected.
TABLE: dict[tuple[State, type], Callable[[CallFlow, Any], None]] = {
    (_S.IDLE, Ring): _H._ring,
    (_S.IDLE, CallerId): _H._caller_before_call,
    (_S.IDLE, HookChanged): _H._hook_while_idle,
    (_S.IDLE, ButtonPressed): _H._toggle_private,
    (_S.IDLE, Tick): _ignore,
    (_S.IDLE, FarSpeech): _ignore,
    (_S.IDLE, DtmfDetected): _ignore,
    (_S.IDLE, PromptFinished): _ignore,  # a test announcement played outside a call
    (_S.IDLE, Fault): _H._set_fault,
    (_S.IDLE, FaultCleared): _H._clear_fault,

    (_S.RINGING, Ring): _H._ring,
    (_S.RINGING, CallerId): _H._caller_before_call,
    (_S.RINGING, HookChanged): _H._hook_while_idle,
    (_S.RINGING, ButtonPressed): _H._toggle_private,
    (_S.RINGING, Tick): _H._ring_tick,
    (_S.RINGING, FarSpeech): _ignore,
    (_S.RINGING, DtmfDetected): _ignore,
    (_S.RINGING, PromptFinished): _ignore,
    (_S.RINGING, Fault): _H._set_fault,
    (_S.RINGING, FaultCleared): _H._clear_fault,

    (_S.CONNECTED, FarSpeech): _H._far_speech,
    (_S.CONNECTED, Tick): _H._connected_tick,
    (_S.CONNECTED, HookChanged): _H._hook_in_call,
    (_S.CONNECTED, ButtonPressed): _H._button_in_call,
    (_S.CONNECTED, CallerId): _H._caller_in_call,
    (_S.CONNECTED, DtmfDetected): _ignore,  # no announcement yet, so no opt-out window
    (_S.CONNECTED, Ring): _H._ring_in_call,
    (_S.CONNECTED, PromptFinished): _ignore,
    (_S.CONNECTED, Fault): _H._fault_in_call,
    (_S.CONNECTED, FaultCleared): _H._clear_fault,

    (_S.ANNOUNCING, PromptFinished): _H._prompt_finished,
    (_S.ANNOUNCING, Tick): _H._keeping_tick,
    (_S.ANNOUNCING, DtmfDetected): _H._dtmf,
    (_S.ANNOUNCING, HookChanged): _H._hook_in_call,
    (_S.ANNOUNCING, ButtonPressed): _H._button_in_call,
    (_S.ANNOUNCING, CallerId): _H._caller_in_call,
    (_S.ANNOUNCING, FarSpeech): _ignore,
    (_S.ANNOUNCING, Ring): _H._ring_in_call,
    (_S.ANNOUNCING, Fault): _H._fault_in_call,
    (_S.ANNOUNCING, FaultCleared): _H._clear_fault,

    (_S.RECORDING, Tick): _H._keeping_tick,
    (_S.RECORDING, DtmfDetected): _H._dtmf,
    (_S.RECORDING, HookChanged): _H._hook_in_call,
    (_S.RECORDING, ButtonPressed): _H._button_in_call,
    (_S.RECORDING, CallerId): _H._caller_in_call,
    (_S.RECORDING, FarSpeech): _ignore,
    (_S.RECORDING, Ring): _H._ring_in_call,
    (_S.RECORDING, PromptFinished): _ignore,
    (_S.RECORDING, Fault): _H._fault_in_call,
    (_S.RECORDING, FaultCleared): _H._clear_fault,

    (_S.PAUSED, Tick): _H._keeping_tick,
    (_S.PAUSED, DtmfDetected): _H._dtmf,
    (_S.PAUSED, HookChanged): _H._hook_in_call,
    (_S.PAUSED, ButtonPressed): _H._button_in_call,
    (_S.PAUSED, CallerId): _H._caller_in_call,
    (_S.PAUSED, PromptFinished): _H._prompt_finished,
    (_S.PAUSED, FarSpeech): _ignore,
    (_S.PAUSED, Ring): _H._ring_in_call,
    (_S.PAUSED, Fault): _H._fault_in_call,
    (_S.PAUSED, FaultCleared): _H._clear_fault,

    (_S.UNRECORDED, Tick): _H._unrecorded_tick,
    (_S.UNRECORDED, HookChanged): _H._hook_in_call,
    (_S.UNRECORDED, ButtonPressed): _H._button_in_call,
    (_S.UNRECORDED, CallerId): _H._caller_in_call,
    (_S.UNRECORDED, DtmfDetected): _ignore,
    (_S.UNRECORDED, FarSpeech): _ignore,
    (_S.UNRECORDED, PromptFinished): _ignore,
    (_S.UNRECORDED, Ring): _H._ring_in_call,
    (_S.UNRECORDED, Fault): _H._fault_in_call,
    (_S.UNRECORDED, FaultCleared): _H._clear_fault,
}
