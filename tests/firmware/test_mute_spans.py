"""Mute from a USB headset's PC marks spans in the call's record and manifest; keeping goes on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from linetap.drivers.events import ButtonPressed, HookChanged, MuteChanged
from linetap.firmware import callflow as cf
from linetap.firmware.callflow import CallFlow, CallPolicy, CallRecord, CallState
from linetap.firmware.clock import ManualClock
from linetap.firmware.recorder import Recording
from linetap.firmware.spool import SpoolSink

from test_caller_withheld import CODEC, RATE, PlainSegmenter, data, open_spool  # noqa: F401  (data: a fixture)

HOOK_OFF, HOOK_ON = HookChanged(True, "hid-host"), HookChanged(False, "hid-host")
MUTE, UNMUTE = MuteChanged(True, "hid-host"), MuteChanged(False, "hid-host")


def _spans(call: CallRecord) -> list[tuple[str, float]]:
    return [(e.kind, e.t) for e in call.events if e.kind.startswith(("mute", "pause"))]


def _hang_up(flow: CallFlow, clock: ManualClock) -> CallRecord:
    flow.handle(HOOK_ON)
    clock.advance(1)
    return [a for a in flow.handle(cf.Tick()) if isinstance(a, cf.CloseCall)][0].call


def test_mute_marks_a_span_and_keeps_recording(clock: ManualClock) -> None:
    flow = CallFlow(CallPolicy(), clock, new_call_id=lambda: "call-1")
    flow.handle(HOOK_OFF)
    flow.handle(cf.PromptFinished())
    clock.advance(2)
    assert flow.handle(MUTE) == []  # no Keep(False), no Pause: audio is still kept
    clock.advance(1)
    assert flow.handle(MUTE) == [] and flow.state == CallState.RECORDING  # the same state again: no new span
    clock.advance(2)
    flow.handle(UNMUTE)
    clock.advance(1)
    flow.handle(ButtonPressed("pause", long=False))
    flow.handle(MUTE)  # muted while paused: two spans, each of its own kind
    clock.advance(2)
    call = _hang_up(flow, clock)
    assert _spans(call) == [("mute-start", 2.0), ("mute-end", 5.0), ("pause-start", 6.0), ("mute-start", 6.0),
                            ("pause-end", 8.0), ("mute-end", 8.0)]
    assert call.events[-1].kind == "call-end"
    assert [e.detail for e in call.events if e.kind == "mute-start"][0] == {"source": "hid-host"}


def test_muted_before_the_call_starts_the_span_with_it(clock: ManualClock) -> None:
    flow = CallFlow(CallPolicy(), clock)
    flow.handle(MUTE)
    clock.advance(3)
    flow.handle(HOOK_OFF)
    flow.handle(cf.PromptFinished())
    clock.advance(4)
    assert _spans(_hang_up(flow, clock)) == [("mute-start", 0.0), ("mute-end", 4.0)]


def test_a_change_in_the_hang_up_grace_belongs_after_the_call(clock: ManualClock) -> None:
    flow = CallFlow(CallPolicy(), clock)
    flow.handle(HOOK_OFF)
    clock.advance(2)
    flow.handle(MUTE)
    clock.advance(1)
    flow.handle(HOOK_ON)
    clock.advance(0.1)
    flow.handle(UNMUTE)  # after the handset went down: not this call's
    clock.advance(1)
    call = [a for a in flow.handle(cf.Tick()) if isinstance(a, cf.CloseCall)][0].call
    assert _spans(call) == [("mute-start", 2.0), ("mute-end", 3.0)]
    assert [e.detail for e in call.events if e.kind == "mute-end"] == [{"source": "call-end"}]
    flow.handle(HOOK_OFF)
    assert not [e for e in flow.call.events if e.kind.startswith("mute")]  # the next call starts unmuted


def test_a_mute_change_in_a_hook_flash_is_kept(clock: ManualClock) -> None:
    flow = CallFlow(CallPolicy(), clock)
    flow.handle(HOOK_OFF)
    clock.advance(2)
    flow.handle(HOOK_ON)
    clock.advance(0.2)
    flow.handle(MUTE)
    flow.handle(HOOK_OFF)  # a flash: the same call goes on, muted
    clock.advance(2)
    assert _spans(_hang_up(flow, clock)) == [("mute-start", 2.2), ("mute-end", 4.2)]


def test_the_manifest_lists_mute_spans_beside_pauses(data: Path, clock: ManualClock) -> None:  # noqa: F811
    flow = CallFlow(CallPolicy(), clock, new_call_id=lambda: "0199a000-0000-7000-8000-000000000002")
    call = [a for a in flow.handle(HOOK_OFF) if isinstance(a, cf.OpenCall)][0].call
    with open_spool(data, clock) as spool:
        sink = SpoolSink(spool, CODEC, PlainSegmenter)
        sink.open(call)
        sink.write(np.zeros((RATE, 2), np.int16))
        clock.advance(1.5)
        flow.handle(MUTE)
        clock.advance(2)
        flow.handle(UNMUTE)
        clock.advance(1)
        ended = _hang_up(flow, clock)
        sink.close(Recording(ended, RATE, 0.0, (), {}))
    manifest = json.loads((data / "spool" / call.call_id / "manifest.json").read_bytes())
    assert manifest["mutes"] == [[1500, 3500]] and manifest["pauses"] == []
    assert [e["kind"] for e in manifest["events"] if e["kind"].startswith("mute")] == ["mute-start", "mute-end"]
