"""What the call flow takes and gives: its policy and events in, actions out.

Frozen dataclasses with no behaviour, as in h11's ``_events.py``: the call
flow (:mod:`linetap.firmware.callflow`) maps them, the app's call loop
produces the events and carries out the actions. Driver events
(:mod:`linetap.drivers.events`) are events here too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from linetap.drivers.events import ButtonPressed, CallerId, HookChanged, MuteChanged, Ring
from linetap.firmware.callrecord import CallRecord
from linetap.firmware.config import CallsSection, ConsentSection

# ---------------------------------------------------------------- policy --

_CONSENT, _CALLS = ConsentSection(), CallsSection()

@dataclass(frozen=True)
class CallPolicy:
    """What a site decided about consent and call timing; the defaults are the config's."""

    announce: bool = _CONSENT.announce
    announce_when: Literal["connect", "far-speech"] = _CONSENT.announce_when
    far_speech_wait_s: float = _CONSENT.far_speech_wait_s  # announce anyway if the far end stays silent
    prompt_sha256: str = ""  # of the prompt as played, recorded as proof
    language: str = _CONSENT.language
    warning_tone: bool = _CONSENT.warning_tone
    warning_interval_s: float = _CONSENT.warning_interval_s
    opt_out_key: str | None = None  # DTMF key a caller presses to refuse recording
    opt_out_window_s: float = _CONSENT.opt_out_window_s  # from the announcement's start
    ring_timeout_s: float = _CALLS.ring_timeout_s  # no RING for this long: the call was missed
    hangup_grace_s: float = _CALLS.hangup_grace_s  # a shorter on-hook is a flash or a bounce
    caller_id_max_age_s: float = _CALLS.caller_id_max_age_s  # older caller ID belongs to no call
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


Event = Ring | CallerId | HookChanged | ButtonPressed | MuteChanged | Tick | FarSpeech | PromptFinished \
    | DtmfDetected | Fault | FaultCleared


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
