"""Forwarding between real headsets (descriptors cited in hid_descriptors.py) and the PC, through the box."""

from __future__ import annotations

import pytest

from linetap.drivers.events import HookChanged, MuteChanged, PhoneButton, PhoneLed
from linetap.drivers.hid import Forwarder, TelephonyDecoder, gadget, parse_descriptor

from hid_descriptors import JABRA_LINK_380C, QUALCOMM_ADK_HEADSET, REAL, REALTEK_RTL8763_TELEPHONY

HOOK, MUTE, FLASH = 0x01, 0x02, 0x04  # the box's input report bits


def _pc() -> TelephonyDecoder:
    """What a softphone makes of the box's input reports."""
    return TelephonyDecoder(gadget.descriptor(), source="hid-headset", kind="input")


def test_jabra_buttons_reach_the_pc_as_the_box_own_reports() -> None:
    forward = Forwarder(parse_descriptor(JABRA_LINK_380C))
    step = forward.from_headset(b"\x02\x01\x00")
    assert step.events == [HookChanged(True, "hid-headset")] and step.to_host == [bytes([HOOK])]
    step = forward.from_headset(b"\x02\x09\x00")  # mute press
    assert step.events == [MuteChanged(True, "hid-headset")]
    assert step.to_host == [bytes([HOOK | MUTE]), bytes([HOOK])]  # a press: set, then clear; hook kept
    step = forward.from_headset(b"\x02\x11\x00")  # flash
    assert step.events == [PhoneButton("flash", "hid-headset")]
    assert step.to_host == [bytes([HOOK | FLASH]), bytes([HOOK])]
    assert forward.from_headset(b"\x02\x21\x00").to_host == []  # redial: the box's interface has none
    pc = _pc()
    events = [e for r in (b"\x01", b"\x03", b"\x01") for e in pc.decode(r)]
    assert events == [HookChanged(True, "hid-headset"), MuteChanged(True, "hid-headset")]


@pytest.mark.parametrize("name, leds", [
    ("jabra-link-380c", [b"\x02\x01\x00"]),
    ("realtek-rtl8763", [b"\x0b\x01"]),
    ("qualcomm-adk", [b"\x09\x00", b"\x17\x01", b"\x18\x00", b"\x20\x00"]),
])
def test_the_pc_off_hook_led_opens_the_call_and_lights_every_headset(name: str, leds: list[bytes]) -> None:
    forward = Forwarder(parse_descriptor(REAL[name]))
    step = forward.from_host(b"\x01")  # the softphone answered on screen: off-hook LED
    assert step.events == [HookChanged(True, "hid-host")]
    assert step.to_headset == leds
    assert step.to_host == [bytes([HOOK])]  # the box's hook switch follows the PC
    assert forward.from_host(b"\x01").events == []  # the same LEDs again: nothing
    step = forward.from_host(b"\x05")
    assert step.events == [MuteChanged(True, "hid-host")]
    step = forward.from_host(b"\x00")
    assert step.events == [HookChanged(False, "hid-host"), MuteChanged(False, "hid-host")]
    assert step.to_host == [b"\x00"]


def test_a_momentary_hook_toggles_from_what_the_pc_decided() -> None:
    forward = Forwarder(parse_descriptor(REALTEK_RTL8763_TELEPHONY))
    forward.from_host(b"\x01")  # answered on screen
    step = forward.from_headset(b"\x0b\x01")  # the headset's hook button: hang up
    assert step.events == [HookChanged(False, "hid-headset")] and step.to_host == [b"\x00"]


def test_ring_and_hold_leds_reach_the_headset_and_the_box() -> None:
    forward = Forwarder(parse_descriptor(QUALCOMM_ADK_HEADSET))
    step = forward.from_host(b"\x02")
    assert step.events == [PhoneLed("ring", True)]
    assert b"\x18\x01" in step.to_headset
    step = forward.from_host(b"\x09")  # answered and put on hold
    assert step.events == [HookChanged(True, "hid-host"), PhoneLed("ring", False), PhoneLed("hold", True)]
    assert {b"\x17\x01", b"\x18\x00", b"\x20\x01"} <= set(step.to_headset)


def test_another_headset_plugged_in_starts_from_the_pc_state() -> None:
    forward = Forwarder(parse_descriptor(JABRA_LINK_380C))
    forward.from_host(b"\x05")  # in a call, muted
    assert forward.plug(parse_descriptor(QUALCOMM_ADK_HEADSET)) == [b"\x09\x01", b"\x17\x01", b"\x18\x00",
                                                                      b"\x20\x00"]
    step = forward.from_headset(b"\x02\x01\x00")  # a mute press on the new headset unmutes
    assert MuteChanged(False, "hid-headset") in step.events
