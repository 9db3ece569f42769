"""Calls from a USB headset's HID controls (firmware/hidcalls.py): one hook and one mute from two sources."""

from __future__ import annotations

from linetap.drivers.events import HookChanged, MuteChanged
from linetap.firmware.hidcalls import HidCallInput


def test_the_softphones_led_echoing_the_headsets_hook_switch_is_one_hook() -> None:
    hid = HidCallInput()
    assert hid.hook(HookChanged(True, "hid-headset")) == HookChanged(True, "hid-headset")
    assert hid.hook(HookChanged(True, "hid-host")) is None  # the LED follows the button
    assert hid.hook(HookChanged(False, "hid-host")) == HookChanged(False, "hid-host")  # ended on the screen
    assert hid.hook(HookChanged(False, "hid-headset")) is None
    assert hid.hook(HookChanged(True, "hid-host")) is not None  # answered on the screen alone


def test_the_softphones_mute_led_echoing_the_headsets_button_is_one_change() -> None:
    # The spans themselves are the call flow's (tests/firmware/test_mute_spans.py).
    hid = HidCallInput()
    assert hid.mute(MuteChanged(True, "hid-headset"))
    assert not hid.mute(MuteChanged(True, "hid-host"))  # the PC's mute LED agreeing
    assert hid.mute(MuteChanged(False, "hid-host"))
    assert not hid.mute(MuteChanged(False, "hid-headset"))
