"""The call state machine: every event in every state, then the timed behaviour."""

from __future__ import annotations

import pytest

from linetap.drivers.events import ButtonPressed, CallerId, HookChanged, MuteChanged, Ring
from linetap.firmware import callflow as cf
from linetap.firmware.callflow import TABLE, CallFlow, CallPolicy, CallState
from linetap.firmware.clock import ManualClock

EVENTS = {
    "ring": Ring(),
    "cid": CallerId(number="5550100", name="DOE JANE"),
    "hook_off": HookChanged(off_hook=True, source="gpio"),
    "hook_on": HookChanged(off_hook=False, source="gpio"),
    "pause": ButtonPressed("pause", long=False),
    "pause_long": ButtonPressed("pause", long=True),
    "flag": ButtonPressed("flag", long=False),
    "tick": cf.Tick(),
    "far_speech": cf.FarSpeech(),
    "prompt_done": cf.PromptFinished(),
    "optout": cf.DtmfDetected("9", "far"),
    "digit": cf.DtmfDetected("5", "far"),
    "fault": cf.Fault("spool full"),
    "fault_cleared": cf.FaultCleared(),
    "mute": MuteChanged(muted=True, source="hid-host"),
}

I, RG, C, A, R, P, U = (CallState.IDLE, CallState.RINGING, CallState.CONNECTED, CallState.ANNOUNCING,
                        CallState.RECORDING, CallState.PAUSED, CallState.UNRECORDED)
UNEXPECTED = "unexpected"

# state -> event -> (state after, action type names). Written out by hand, apart
# from the table in the code, so that a change to either shows up here.
EXPECTED: dict[CallState, dict[str, tuple]] = {
    I: {
        "ring": (RG, []), "cid": (I, []), "hook_off": (A, ["OpenCall", "Keep", "PlayPrompt"]),
        "hook_on": (I, []), "pause": (I, []), "pause_long": (I, ["Indicate"]), "flag": (I, []),
        "tick": (I, []), "far_speech": (I, []), "prompt_done": (I, []), "optout": (I, []),
        "digit": (I, []), "fault": (I, ["Indicate"]), "fault_cleared": (I, ["Indicate"]), "mute": (I, []),
    },
    RG: {
        "ring": (RG, []), "cid": (RG, []), "hook_off": (A, ["OpenCall", "Keep", "PlayPrompt"]),
        "hook_on": (RG, []), "pause": (RG, []), "pause_long": (RG, ["Indicate"]), "flag": (RG, []),
        "tick": (RG, []), "far_speech": (RG, []), "prompt_done": (RG, []), "optout": (RG, []),
        "digit": (RG, []), "fault": (RG, ["Indicate"]), "fault_cleared": (RG, ["Indicate"]), "mute": (RG, []),
    },
    C: {
        "ring": (C, []), "cid": (C, []), "hook_off": (C, UNEXPECTED), "hook_on": (C, []),
        "pause": (C, []), "pause_long": (U, ["Indicate"]), "flag": (C, []), "tick": (C, []),
        "far_speech": (A, ["Keep", "PlayPrompt"]), "prompt_done": (C, []), "optout": (C, []),
        "digit": (C, []), "fault": (U, ["Indicate"]), "fault_cleared": (C, []), "mute": (C, []),
    },
    A: {
        "ring": (A, []), "cid": (A, []), "hook_off": (A, UNEXPECTED), "hook_on": (A, []),
        "pause": (A, []), "pause_long": (U, ["StopPrompt", "Keep", "Discard", "Indicate"]),
        "flag": (A, []), "tick": (A, []), "far_speech": (A, []), "prompt_done": (R, []),
        "optout": (U, ["StopPrompt", "Keep", "Discard", "Indicate"]), "digit": (A, []),
        "fault": (U, ["StopPrompt", "Keep", "Indicate"]), "fault_cleared": (A, []), "mute": (A, []),
    },
    R: {
        "ring": (R, []), "cid": (R, []), "hook_off": (R, UNEXPECTED), "hook_on": (R, []),
        "pause": (P, ["Pause"]), "pause_long": (U, ["Keep", "Discard", "Indicate"]),
        "flag": (R, []), "tick": (R, []), "far_speech": (R, []), "prompt_done": (R, []),
        "optout": (U, ["Keep", "Discard", "Indicate"]), "digit": (R, []),
        "fault": (U, ["Keep", "Indicate"]), "fault_cleared": (R, []), "mute": (R, []),
    },
    P: {
        "ring": (P, []), "cid": (P, []), "hook_off": (P, UNEXPECTED), "hook_on": (P, []),
        "pause": (R, ["Pause"]), "pause_long": (U, ["Keep", "Discard", "Indicate"]),
        "flag": (P, []), "tick": (P, []), "far_speech": (P, []), "prompt_done": (P, []),
        "optout": (U, ["Keep", "Discard", "Indicate"]), "digit": (P, []),
        "fault": (U, ["Keep", "Indicate"]), "fault_cleared": (P, []), "mute": (P, []),
    },
    U: {
        "ring": (U, []), "cid": (U, []), "hook_off": (U, UNEXPECTED), "hook_on": (U, []),
        "pause": (U, []), "pause_long": (U, []), "flag": (U, []), "tick": (U, []),
        "far_speech": (U, []), "prompt_done": (U, []), "optout": (U, []), "digit": (U, []),
        "fault": (U, []), "fault_cleared": (U, []), "mute": (U, []),
    },
}

POLICY = CallPolicy(opt_out_key="9", prompt_sha256="ab" * 32)


def flow_in(state: CallState, clock: ManualClock) -> CallFlow:
    """A machine brought into ``state`` by ordinary events."""
    policy = POLICY if state != C else CallPolicy(opt_out_key="9", announce_when="far-speech")
    flow = CallFlow(policy, clock, new_call_id=lambda: "call-1")
    steps = {
        I: [], RG: ["ring"], C: ["hook_off"], A: ["hook_off"], R: ["hook_off", "prompt_done"],
        P: ["hook_off", "prompt_done", "pause"], U: ["hook_off", "pause_long"],
    }[state]
    for step in steps:
        flow.handle(EVENTS[step])
    assert flow.state == state
    return flow


def test_expectations_cover_every_state_and_event() -> None:
    assert set(EXPECTED) == set(CallState)
    for row in EXPECTED.values():
        assert set(row) == set(EVENTS)


def test_the_table_has_a_row_for_every_event_type_in_every_state() -> None:
    # Unexpected pairs are then only unknown event types and a handler's UNEXPECTED outcome.
    kinds = {type(e) for e in EVENTS.values()}
    assert set(TABLE) == {(state, kind) for state in CallState for kind in kinds}


def test_every_state_reached_is_one_its_row_names() -> None:
    # Next states are data in the rows: what the exhaustive test reaches must be in them.
    for state, row in EXPECTED.items():
        for name, (after, _) in row.items():
            entry = TABLE[(state, type(EVENTS[name]))]
            assert after in {entry.to, *entry.unless.values()}, (state, name, after)


@pytest.mark.parametrize("state", list(EXPECTED), ids=lambda s: s.value)
@pytest.mark.parametrize("event", list(EVENTS))
def test_every_event_in_every_state(state: CallState, event: str, clock: ManualClock) -> None:
    flow = flow_in(state, clock)
    before = flow.unexpected
    actions = flow.handle(EVENTS[event])
    after, expected = EXPECTED[state][event]
    assert flow.state == after
    if expected == UNEXPECTED:
        assert actions == [] and flow.unexpected == before + 1
    else:
        assert [type(a).__name__ for a in actions] == expected
        assert flow.unexpected == before


def test_unknown_event_type_is_counted_not_raised(clock: ManualClock) -> None:
    flow = CallFlow(POLICY, clock)
    assert flow.handle(object()) == []  # type: ignore[arg-type]
    assert flow.unexpected == 1 and flow.state == I


def names(actions: list) -> list[str]:
    return [type(a).__name__ for a in actions]


def test_a_whole_call_records_announcement_proof_and_closes(clock: ManualClock) -> None:
    flow = CallFlow(POLICY, clock, new_call_id=lambda: "call-1")
    flow.handle(Ring())
    flow.handle(EVENTS["cid"])
    clock.advance(2)
    opened = flow.handle(EVENTS["hook_off"])
    assert opened[0].call.caller.number == "5550100"
    clock.advance(3.2)
    flow.handle(cf.PromptFinished())
    clock.advance(10)
    flow.handle(EVENTS["hook_on"])
    clock.advance(1)
    closed = flow.handle(cf.Tick())
    assert names(closed) == ["Keep", "CloseCall", "Indicate"]
    assert closed[0] == cf.Keep(False)
    call = closed[1].call
    assert call.recorded and call.ended_by == "hang-up"
    assert call.ended_mono == pytest.approx(call.started_mono + 13.2)
    kinds = [(e.t, e.kind) for e in call.events]
    assert kinds == [(0.0, "call-start"), (0.0, "announcement-start"),
                     (3.2, "announcement-end"), (13.2, "call-end")]
    assert call.events[1].detail["prompt_sha256"] == "ab" * 32
    assert flow.state == I and flow.call is None


def test_warning_tone_repeats_at_the_interval_and_stops_while_paused(clock: ManualClock) -> None:
    flow = flow_in(R, clock)
    tones = []
    for step in range(1, 61 * 50):  # 61 s of 20 ms ticks
        clock.advance(0.02)
        if step == 40 * 50:
            flow.handle(EVENTS["pause"])
        tones += [clock.monotonic() for a in flow.handle(cf.Tick()) if isinstance(a, cf.PlayWarningTone)]
    start = clock.monotonic() - 61
    assert [round(t - start) for t in tones] == [15, 30]  # none at 45 or 60: paused from 40 s


def test_warning_tone_resumes_a_full_interval_after_pause_ends(clock: ManualClock) -> None:
    flow = flow_in(P, clock)
    flow.handle(EVENTS["pause"])
    resumed = clock.monotonic()
    clock.advance(14.9)
    assert not flow.handle(cf.Tick())
    clock.advance(0.2)
    assert names(flow.handle(cf.Tick())) == ["PlayWarningTone"]
    assert clock.monotonic() - resumed == pytest.approx(15.1)


def test_no_warning_tone_when_policy_turns_it_off(clock: ManualClock) -> None:
    flow = CallFlow(CallPolicy(warning_tone=False), clock)
    flow.handle(EVENTS["hook_off"])
    flow.handle(cf.PromptFinished())
    clock.advance(100)
    assert flow.handle(cf.Tick()) == []


def test_opt_out_only_within_window(clock: ManualClock) -> None:
    flow = flow_in(R, clock)
    clock.advance(POLICY.opt_out_window_s + 0.1)
    flow.handle(cf.Tick())
    assert flow.handle(EVENTS["optout"]) == []
    assert flow.state == R


def test_opt_out_during_announcement_discards_and_keeps_consent_event(clock: ManualClock) -> None:
    flow = flow_in(A, clock)
    clock.advance(1.0)
    flow.handle(EVENTS["optout"])
    clock.advance(5)
    flow.handle(EVENTS["hook_on"])
    clock.advance(1)
    closed = [a for a in flow.handle(cf.Tick()) if isinstance(a, cf.CloseCall)][0].call
    assert not closed.recorded
    optout = [e for e in closed.events if e.kind == "opt-out"][0]
    assert optout.t == 1.0 and optout.detail == {"by": "caller", "channel": "far"}
    assert "9" not in str(closed.events)  # the digit itself is not kept


def test_hook_flash_within_grace_does_not_split_the_call(clock: ManualClock) -> None:
    flow = flow_in(R, clock)
    flow.handle(EVENTS["hook_on"])
    clock.advance(POLICY.hangup_grace_s / 2)
    assert flow.handle(cf.Tick()) == []
    flow.handle(EVENTS["hook_off"])
    clock.advance(5)
    flow.handle(cf.Tick())
    assert flow.state == R
    assert [e.kind for e in flow.call.events][-1] == "hook-flash"


def test_two_hook_offs_without_hook_on_are_counted(clock: ManualClock) -> None:
    flow = flow_in(R, clock)
    call_id = flow.call.call_id
    flow.handle(EVENTS["hook_off"])
    assert flow.unexpected == 1 and flow.call.call_id == call_id


def test_ring_timeout_returns_to_idle_and_forgets_caller(clock: ManualClock) -> None:
    flow = CallFlow(POLICY, clock)
    flow.handle(Ring())
    flow.handle(EVENTS["cid"])
    clock.advance(POLICY.ring_timeout_s + 0.1)
    flow.handle(cf.Tick())
    assert flow.state == I
    opened = flow.handle(EVENTS["hook_off"])[0]
    assert opened.call.caller is None


def test_stale_caller_id_is_not_attached(clock: ManualClock) -> None:
    flow = CallFlow(POLICY, clock)
    flow.handle(EVENTS["cid"])
    clock.advance(POLICY.caller_id_max_age_s + 1)
    assert flow.handle(EVENTS["hook_off"])[0].call.caller is None


def test_caller_id_after_answer_is_attached(clock: ManualClock) -> None:
    flow = flow_in(R, clock)
    flow.handle(EVENTS["cid"])
    assert flow.call.caller.name == "DOE JANE"
    assert flow.call.events[-1].kind == "caller-id-received"
    assert "DOE" not in str(flow.call.events)


def test_far_speech_policy_waits_then_announces_on_timeout(clock: ManualClock) -> None:
    flow = CallFlow(CallPolicy(announce_when="far-speech", far_speech_wait_s=8), clock)
    assert names(flow.handle(EVENTS["hook_off"])) == ["OpenCall"]
    clock.advance(7.9)
    assert flow.handle(cf.Tick()) == []
    clock.advance(0.2)
    assert names(flow.handle(cf.Tick())) == ["Keep", "PlayPrompt"]
    assert flow.call.events[-1].detail["trigger"] == "far-speech-timeout"


def test_no_announcement_policy_records_at_once(clock: ManualClock) -> None:
    flow = CallFlow(CallPolicy(announce=False), clock)
    assert names(flow.handle(EVENTS["hook_off"])) == ["OpenCall", "Keep"]
    assert flow.state == R


def test_private_armed_before_call_records_nothing(clock: ManualClock) -> None:
    flow = CallFlow(POLICY, clock)
    assert flow.handle(EVENTS["pause_long"]) == [cf.Indicate("private")]
    actions = flow.handle(EVENTS["hook_off"])
    assert names(actions) == ["OpenCall", "Indicate"]
    assert flow.state == U
    assert flow.call.events[-1].kind == "private"
    assert flow.call.events[-1].detail == {"by": "agent", "when": "before-call"}


def test_private_disarms_with_a_second_long_press(clock: ManualClock) -> None:
    flow = CallFlow(POLICY, clock)
    flow.handle(EVENTS["pause_long"])
    assert flow.handle(EVENTS["pause_long"]) == [cf.Indicate("idle")]
    assert flow.handle(EVENTS["hook_off"])[1] == cf.Keep(True)


def test_fault_before_call_records_nothing_and_shows_fault(clock: ManualClock) -> None:
    flow = CallFlow(POLICY, clock)
    flow.handle(cf.Fault("no recipient key"))
    actions = flow.handle(EVENTS["hook_off"])
    assert cf.Keep(True) not in actions and cf.Indicate("fault") in actions
    assert flow.call.events[-1].detail == {"reason": "no recipient key"}


def test_fault_mid_call_keeps_what_was_recorded(clock: ManualClock) -> None:
    flow = flow_in(R, clock)
    flow.handle(cf.Fault("disk full"))
    flow.handle(EVENTS["hook_on"])
    clock.advance(1)
    closed = [a for a in flow.handle(cf.Tick()) if isinstance(a, cf.CloseCall)][0].call
    assert closed.recorded
    assert flow.handle(cf.FaultCleared()) == [cf.Indicate("idle")]


def test_flag_marks_the_call(clock: ManualClock) -> None:
    flow = flow_in(U, clock)
    flow.handle(EVENTS["flag"])
    assert flow.call.flagged


def test_pause_spans_are_marked(clock: ManualClock) -> None:
    flow = flow_in(R, clock)
    clock.advance(2)
    flow.handle(EVENTS["pause"])
    clock.advance(3)
    flow.handle(EVENTS["hook_on"])
    clock.advance(1)
    call = [a for a in flow.handle(cf.Tick()) if isinstance(a, cf.CloseCall)][0].call
    marks = [(e.kind, e.t) for e in call.events if e.kind.startswith("pause")]
    assert marks == [("pause-start", 2.0), ("pause-end", 5.0)]


def test_keep_actions_balance_in_every_path(clock: ManualClock) -> None:
    """Whatever happens, each Keep(True) is matched by a Keep(False) by the end of the call."""
    import itertools

    for path in itertools.product(["pause", "pause_long", "optout", "fault", "prompt_done", "tick"], repeat=3):
        flow = CallFlow(POLICY, ManualClock())
        acts = flow.handle(EVENTS["hook_off"])
        for step in path:
            acts += flow.handle(EVENTS[step])
        acts += flow.handle(EVENTS["hook_on"])
        flow._clock.advance(1)
        acts += flow.handle(cf.Tick())
        keeps = [a.on for a in acts if isinstance(a, cf.Keep)]
        assert keeps and keeps[0] is True and keeps[-1] is False, path
        assert all(a != b for a, b in zip(keeps, keeps[1:])), path


def test_uuid7_is_time_ordered_and_well_formed() -> None:
    import uuid

    ids = [cf.uuid7() for _ in range(50)]
    parsed = [uuid.UUID(i) for i in ids]
    assert all(u.version == 7 and u.variant == uuid.RFC_4122 for u in parsed)
    assert [i[:13] for i in ids] == sorted(i[:13] for i in ids)


def test_ring_while_the_handset_is_down_ends_the_call_and_starts_ringing(clock: ManualClock) -> None:
    flow = flow_in(R, clock)
    clock.advance(5)
    flow.handle(EVENTS["hook_on"])
    clock.advance(0.3)
    actions = flow.handle(Ring())
    assert names(actions) == ["Keep", "CloseCall", "Indicate"]
    assert actions[1].call.ended_mono == pytest.approx(actions[1].call.started_mono + 5)
    assert flow.state == RG
    flow.handle(EVENTS["cid"])  # the next call's caller ID
    assert flow.handle(EVENTS["hook_off"])[0].call.caller.number == "5550100"


def test_caller_id_while_the_handset_is_down_is_kept_for_the_next_call(clock: ManualClock) -> None:
    flow = flow_in(R, clock)
    flow.handle(EVENTS["hook_on"])
    flow.handle(EVENTS["cid"])
    assert flow.call.caller is None
    clock.advance(1)
    closed = [a for a in flow.handle(cf.Tick()) if isinstance(a, cf.CloseCall)][0].call
    assert closed.caller is None
    assert flow.handle(EVENTS["hook_off"])[0].call.caller.number == "5550100"
