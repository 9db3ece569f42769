"""Telephony reports of real headsets (descriptors cited in hid_descriptors.py): edges out, LED reports in."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from linetap.drivers.events import HookChanged, MuteChanged, PhoneButton, PhoneLed
from linetap.drivers.hid import HidDescriptorError, TelephonyDecoder, gadget, parse_descriptor

from hid_descriptors import JABRA_LINK_380C, QUALCOMM_ADK_HEADSET, REAL, REALTEK_RTL8763_TELEPHONY


def _decoder(data: bytes) -> TelephonyDecoder:
    return TelephonyDecoder(parse_descriptor(data), source="hid-headset")


def _hook(on: bool) -> HookChanged:
    return HookChanged(on, "hid-headset")


def _mute(on: bool) -> MuteChanged:
    return MuteChanged(on, "hid-headset")


@pytest.mark.parametrize("name, relative", [
    ("jabra-link-380c", {"hook": False, "mute": True}),
    ("realtek-rtl8763", {"hook": True, "mute": True}),
    ("qualcomm-adk", {"hook": False, "mute": True}),
])
def test_each_real_headset_has_hook_and_mute_as_its_descriptor_says(name: str, relative: dict[str, bool]) -> None:
    decoder = _decoder(REAL[name])
    assert decoder.relative == relative
    assert {"hook", "mute", "flash"} <= set(decoder.controls)


def test_jabra_hook_is_a_state_mute_a_button_and_repeats_give_nothing() -> None:
    jabra = _decoder(JABRA_LINK_380C)
    # Report 2: bit 0 hook (in a Constant item), bit 3 mute, bit 4 flash, bit 5 redial, bits 7-10 keypad.
    assert jabra.decode(b"\x02\x01\x00") == [_hook(True)]
    assert jabra.decode(b"\x02\x01\x00") == []  # the same state again: no edge
    assert jabra.decode(b"\x02\x09\x00") == [_mute(True)]  # a press toggles
    assert jabra.decode(b"\x02\x01\x00") == []  # release
    assert jabra.decode(b"\x02\x09\x00") == [_mute(False)]
    assert jabra.decode(b"\x02\x11\x00") == [PhoneButton("flash", "hid-headset")]
    assert jabra.decode(b"\x02\x21\x00") == [PhoneButton("redial", "hid-headset")]
    assert jabra.decode(b"\x02\x00\x00") == [_hook(False)]


def test_realtek_momentary_hook_toggles_and_follows_the_pc() -> None:
    realtek = _decoder(REALTEK_RTL8763_TELEPHONY)
    assert realtek.decode(b"\x0b\x01") == [_hook(True)]
    assert realtek.decode(b"\x0b\x00") == []
    assert realtek.decode(b"\x0b\x01") == [_hook(False)]
    realtek.decode(b"\x0b\x00")
    realtek.sync(off_hook=True)  # the softphone answered on screen
    assert realtek.decode(b"\x0b\x01") == [_hook(False)]  # so this press hangs up
    realtek.decode(b"\x0b\x00")
    assert realtek.decode(b"\x0b\x10") == [PhoneButton("drop", "hid-headset")]


def test_qualcomm_absolute_hook_relative_mute() -> None:
    qualcomm = _decoder(QUALCOMM_ADK_HEADSET)
    assert qualcomm.decode(b"\x02\x02\x00") == [_hook(True)]  # bit 1: hook
    assert qualcomm.decode(b"\x02\x03\x00") == [_mute(True)]  # bit 0: mute press
    assert qualcomm.decode(b"\x02\x06\x00") == [PhoneButton("flash", "hid-headset")]
    assert qualcomm.decode(b"\x01\xff\x07") == []  # the consumer report: volume, play... not ours


def test_unknown_usages_are_ignored_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    jabra = _decoder(JABRA_LINK_380C)
    caplog.set_level(logging.INFO, logger="linetap.drivers.hid.telephony")
    for _ in range(3):
        assert jabra.decode(b"\x02\x80\x00") == []  # keypad array: index 1, Phone Key 1
        assert jabra.decode(b"\x02\x00\x00") == []
        assert jabra.decode(b"\x04\x01\x00") == []  # vendor page 0xFF30 usage 0x20, not the hook switch
        assert jabra.decode(b"\x01\x04\x00") == []  # consumer Mute is the speaker's, not the phone's
    logged = [r.getMessage() for r in caplog.records if "logged once" in r.getMessage()]
    # The keypad is an array whose logical range starts at 0, so 0 is Phone Key 0 (0x0B00B0), as the spec reads.
    # Report 4 copies report 2 on vendor page 0xFF30: its keypad reads 0 too.
    assert len(logged) == 5 and any("0x000B00B1" in m for m in logged)
    assert jabra.unknown == {0x0B00B0, 0x0B00B1, 0xFF300020, 0xFF3000B0, 0x0C00E2}


def test_refused_reports_are_counted_not_raised() -> None:
    jabra = _decoder(JABRA_LINK_380C)
    assert jabra.decode(b"") == [] and jabra.decode(b"\x07\x01") == [] and jabra.decode(bytes(5000)) == []
    assert jabra.refused == 3 and jabra.reports == 0
    assert jabra.decode(b"\x02\x01") == [_hook(True)]  # short: the missing bytes read as zero


def test_led_reports_in_each_headsets_own_layout() -> None:
    jabra = _decoder(JABRA_LINK_380C)
    assert jabra.encode_leds(off_hook=True, mute=True) == [b"\x02\x05\x00"]  # off-hook bit 0, mute bit 2
    assert jabra.encode_leds(ring=True) == [b"\x02\x0d\x00"]  # the others keep their state
    realtek = _decoder(REALTEK_RTL8763_TELEPHONY)
    assert realtek.encode_leds(off_hook=True, hold=True) == [b"\x0b\x21"]
    qualcomm = _decoder(QUALCOMM_ADK_HEADSET)
    assert qualcomm.encode_leds(off_hook=True) == [b"\x17\x01"]
    assert qualcomm.encode_leds(mute=True, ring=True, microphone=True) == [b"\x09\x01", b"\x18\x01"]
    assert qualcomm.encode_leds(off_hook=False, hold=True) == [b"\x17\x00", b"\x20\x01"]


def test_the_pc_side_decodes_the_box_gadget_leds() -> None:
    host = TelephonyDecoder(gadget.descriptor(), source="hid-host", kind="output")
    assert host.decode(b"\x01") == [HookChanged(True, "hid-host")]
    assert host.decode(b"\x07") == [PhoneLed("ring", True), MuteChanged(True, "hid-host")]
    assert host.decode(b"\x05") == [PhoneLed("ring", False)]
    assert host.level("mute") and not host.level("ring")


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(REAL)), st.lists(st.binary(min_size=1, max_size=8), max_size=20))
def test_any_reports_decode_without_error_and_a_repeat_gives_nothing(name: str, reports: list[bytes]) -> None:
    decoder = _decoder(REAL[name])
    for report in reports:
        decoder.decode(report)
        assert decoder.decode(report) == []


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(REAL)), st.integers(0, 400), st.integers(0, 255),
       st.lists(st.binary(min_size=1, max_size=70), max_size=10))
def test_a_mangled_descriptor_never_makes_reports_raise(name: str, at: int, value: int, reports: list[bytes]) -> None:
    data = bytearray(REAL[name])
    data[at % len(data)] = value
    try:
        descriptor = parse_descriptor(bytes(data))
    except HidDescriptorError:
        return
    for kind in ("input", "output"):
        decoder = TelephonyDecoder(descriptor, source="hid-headset", kind=kind)  # type: ignore[arg-type]
        for report in reports:
            decoder.decode(report)
        decoder.encode_leds(off_hook=True, mute=True, ring=True, hold=True, microphone=True)
