"""Calls from a USB headset's HID controls (firmware/hidcalls.py): one hook from two sources, mute spans."""

from __future__ import annotations

from linetap.drivers.events import HookChanged, MuteChanged
from linetap.firmware.callrecord import CallEvent, CallRecord
from linetap.firmware.hidcalls import HidCallInput


def call(start: float = 100.0, end: float | None = 130.0, events: tuple[CallEvent, ...] = ()) -> CallRecord:
    return CallRecord("c1", started_mono=start, started_wall=0.0, clock_synced=True, ended_mono=end,
                      events=events)


def test_the_softphones_led_echoing_the_headsets_hook_switch_is_one_hook() -> None:
    hid = HidCallInput()
    assert hid.hook(HookChanged(True, "hid-headset")) == HookChanged(True, "hid-headset")
    assert hid.hook(HookChanged(True, "hid-host")) is None  # the LED follows the button
    assert hid.hook(HookChanged(False, "hid-host")) == HookChanged(False, "hid-host")  # ended on the screen
    assert hid.hook(HookChanged(False, "hid-headset")) is None
    assert hid.hook(HookChanged(True, "hid-host")) is not None  # answered on the screen alone


def test_mute_spans_become_events_on_the_calls_time_axis() -> None:
    hid = HidCallInput()
    record = call(events=(CallEvent(0.0, "call-start"), CallEvent(12.0, "announcement-end")))
    hid.call_opened(record)
    assert hid.mute(MuteChanged(True, "hid-headset"), 110.0)
    assert not hid.mute(MuteChanged(True, "hid-host"), 110.2)  # the PC's mute LED agreeing
    assert hid.mute(MuteChanged(False, "hid-host"), 115.5)
    merged = hid.with_mute_spans(record)
    assert [(e.t, e.kind, e.detail) for e in merged.events] == [
        (0.0, "call-start", {}), (10.0, "mute-start", {"source": "hid-headset"}),
        (12.0, "announcement-end", {}), (15.5, "mute-end", {"source": "hid-host"})]
    assert hid.with_mute_spans(record) == record  # spans are handed out once


def test_a_call_that_starts_or_ends_muted_has_its_span_closed() -> None:
    hid = HidCallInput()
    hid.mute(MuteChanged(True, "hid-host"), 50.0)  # muted before the call
    record = call()
    hid.call_opened(record)
    assert [(e.t, e.kind, e.detail["source"]) for e in hid.mute_events(record)] == [
        (0.0, "mute-start", "already-muted"), (30.0, "mute-end", "call-end")]


def test_changes_outside_the_call_are_not_its_events() -> None:
    hid = HidCallInput()
    record = call(start=100.0, end=130.0)
    hid.call_opened(record)
    hid.mute(MuteChanged(True, "hid-headset"), 131.0)  # during the hang-up grace, after the call's end
    assert hid.mute_events(record) == ()
