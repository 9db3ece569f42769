"""The HID report-descriptor parser: real telephony headsets (cited in hid_descriptors.py) and hostile bytes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from linetap.drivers.hid import HidDescriptorError, gadget, parse_descriptor
from linetap.drivers.hid.descriptor import MAX_DEPTH, MAX_DESCRIPTOR_BYTES, NULL_STATE, Kind, ReportDescriptor

from hid_descriptors import JABRA_LINK_380C, QUALCOMM_ADK_HEADSET, REAL, REALTEK_RTL8763_TELEPHONY


def _layout(d: ReportDescriptor, kind: Kind, rid: int) -> list[tuple[int, int, int, tuple[int, ...], int]]:
    return [(f.bit_offset, f.bit_size, f.count, f.usages[:3], f.flags) for f in d.fields_of(kind, rid)]


def test_jabra_link_380c_reports_ids_vendor_pages_and_arrays() -> None:
    d = parse_descriptor(JABRA_LINK_380C)
    assert d.numbered
    assert d.applications == (0x000B0005, 0xFF000001, 0x000C0001)
    assert d.report_ids("input") == (1, 2, 4, 5)
    assert d.report_ids("output") == (2, 4, 5)
    assert _layout(d, "input", 2) == [
        (0, 1, 3, (0x0B0020, 0x0B0097, 0x0B002A), 0x23),  # hook switch in an item marked Constant
        (3, 1, 4, (0x0B002F, 0x0B0021, 0x0B0024), 0x07),  # mute, flash, redial: relative
        (7, 4, 1, (0x0B00B0, 0x0B00B1, 0x0B00B2), 0x40),  # keypad array with a null state
        (11, 1, 1, (0x090007,), 0x02),  # usage given before the page changed takes the page at the main item
        (12, 1, 4, (), 0x01),  # padding
    ]
    keypad = d.fields_of("input", 2)[2]
    assert not keypad.variable and keypad.flags & NULL_STATE and len(keypad.usages) == 12
    assert (keypad.logical_min, keypad.logical_max) == (0, 12)
    assert d.report_bytes("input", 2) == 3 and d.report_bytes("output", 2) == 3
    buffered = d.fields_of("output", 5)[0]
    assert (buffered.bit_size, buffered.count, buffered.flags, buffered.logical_max) == (8, 62, 0x102, 255)
    assert d.report_bytes("input", 5) == 63
    vendor_leds = d.fields_of("output", 4)[0]
    assert vendor_leds.usages[0] == 0xFF400017 and vendor_leds.usages[1] == 0xFF40FFFB  # 2-byte usage on a vendor page
    assert d.fields_of("feature", 4)[0].usages == (0xFF30FFFF,)


def test_realtek_headset_one_report_id_both_ways() -> None:
    d = parse_descriptor(REALTEK_RTL8763_TELEPHONY)
    assert d.report_ids("input") == (0x0B,) and d.report_ids("output") == (0x0B,)
    hook, mute = d.fields_of("input", 0x0B)[:2]
    assert hook.usages == (0x0B0020,) and hook.relative and hook.variable
    assert mute.usages == (0x0B002F,) and mute.relative
    leds = d.fields_of("output", 0x0B)[0]
    assert leds.usages == (0x080017, 0x080009, 0x080018, 0x080021, 0x08002A, 0x080020)
    assert d.report_bytes("input", 0x0B) == 2 and d.report_bytes("output", 0x0B) == 2


def test_qualcomm_headset_one_output_report_per_led() -> None:
    d = parse_descriptor(QUALCOMM_ADK_HEADSET)
    assert d.applications == (0x000C0001, 0x000B0005)
    assert d.report_ids("output") == (0x09, 0x17, 0x18, 0x20)
    assert [d.fields_of("output", rid)[0].usages for rid in (0x09, 0x17, 0x18, 0x20)] == [
        (0x080009,), (0x080017,), (0x080018,), (0x080020,)]
    mute, hook_flash = d.fields_of("input", 2)[:2]
    assert mute.relative and not hook_flash.relative and hook_flash.usages == (0x0B0020, 0x0B0021)
    assert d.report_bytes("input", 2) == 3  # 16 bits after the id


def test_the_box_gadget_descriptor() -> None:
    d = gadget.descriptor()
    assert not d.numbered and d.applications == (0x000B0005,)
    assert gadget.report_length() == 1 and gadget.report_descriptor() == gadget.REPORT_DESCRIPTOR
    hook, buttons, _pad = d.fields_of("input", 0)
    assert hook.usages == (0x0B0020,) and not hook.relative
    assert buttons.usages == (0x0B002F, 0x0B0021) and buttons.relative
    assert d.fields_of("output", 0)[0].usages == (0x080017, 0x080018, 0x080009, 0x080020, 0x080021)


def test_push_pop_signed_ranges_long_items_and_four_byte_usages() -> None:
    d = parse_descriptor(bytes((
        0x05, 0x01, 0x09, 0x02, 0xA1, 0x01,
        0x15, 0x81, 0x25, 0x7F, 0x75, 0x08, 0x95, 0x02,  # -127..127, 8 bits
        0xA4,  # push
        0x09, 0x30, 0x09, 0x31, 0x81, 0x06,
        0x15, 0x00, 0x26, 0xFF, 0x00, 0x95, 0x01,  # 0..255
        0xFE, 0x02, 0x10, 0xAA, 0xBB,  # a long item: skipped
        0x0B, 0x20, 0x00, 0x0B, 0x00,  # a four-byte usage: Telephony Hook Switch on the desktop page
        0x81, 0x02,
        0xB4,  # pop: back to -127..127, two values
        0x09, 0x38, 0x81, 0x06,
        0xC0)))
    xy, hook, wheel = d.fields
    assert (xy.logical_min, xy.logical_max, hook.logical_min, hook.logical_max) == (-127, 127, 0, 255)
    assert hook.usages == (0x0B0020,) and wheel.count == 2 and wheel.bit_offset == 24
    assert xy.values(bytes((0xFF, 0x05, 0x80, 0x00, 0x00))) == (-1, 5)
    assert hook.values(bytes((0, 0, 0x80))) == (128,)


@pytest.mark.parametrize("data, problem", [
    (b"", "empty"),
    (bytes(MAX_DESCRIPTOR_BYTES + 1), f"over {MAX_DESCRIPTOR_BYTES}"),
    (bytes((0x05, 0x0B, 0x09)), "runs past the end"),
    (bytes((0xFE, 0x10, 0x01, 0x00)), "long item runs past"),
    (bytes((0x05, 0x0B, 0x09, 0x05, 0xA1, 0x01)), "not closed"),
    (bytes((0xC0,)), "end collection without"),
    (bytes((0xA1, 0x01)) * (MAX_DEPTH + 1), f"deeper than {MAX_DEPTH}"),
    (bytes((0x77, 0x00, 0x00, 0x01, 0x00)), "report size 65536 bits"),
    (bytes((0x75, 0x00)), "report size 0 bits"),
    (bytes((0x97, 0x00, 0x00, 0x10, 0x00)), "report count 1048576"),
    (bytes((0x75, 0x08, 0x96, 0x00, 0x10, 0x81, 0x02, 0x81, 0x02)), "grows past 4096 bytes"),
    (bytes((0x85, 0x00)), "report id 0"),
    (bytes((0xB4,)), "pop without a push"),
    (bytes((0xA4,)) * 9, "nested pushes"),
    (bytes((0x0C,)), "reserved item type"),
    (bytes((0x19, 0x00, 0x2A, 0xFF, 0xFF, 0x75, 0x08, 0x95, 0x01, 0x81, 0x00)), "usage range"),
    (bytes((0x29, 0x05)), "usage maximum without a usage minimum"),
    (bytes((0x95, 0x01, 0x81, 0x02)), "no report size"),
    (bytes((0x75, 0x01, 0x95, 0x01, 0x81, 0x02, 0x85, 0x01, 0x81, 0x02)), "some reports have a report id"),
    (bytes((0xF4,)), "unknown global item tag 0xF"),
    (bytes((0xF0,)), "unknown main item tag 0xF"),
])
def test_hostile_descriptors_are_refused_by_name(data: bytes, problem: str) -> None:
    with pytest.raises(HidDescriptorError, match="HID report descriptor at byte [0-9]+: .*" + problem):
        parse_descriptor(data)


@pytest.mark.parametrize("name", sorted(REAL))
def test_every_truncation_of_a_real_descriptor_is_parsed_or_refused(name: str) -> None:
    data = REAL[name]
    for cut in range(len(data)):
        try:
            parse_descriptor(data[:cut])
        except HidDescriptorError:
            continue


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_are_parsed_or_refused_never_crash(data: bytes) -> None:
    try:
        parse_descriptor(data)
    except HidDescriptorError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(REAL)), st.integers(0, 400), st.integers(0, 255))
def test_a_real_descriptor_with_one_byte_changed_is_parsed_or_refused(name: str, at: int, value: int) -> None:
    data = bytearray(REAL[name])
    data[at % len(data)] = value
    try:
        d = parse_descriptor(bytes(data))
    except HidDescriptorError:
        return
    for kind in ("input", "output", "feature"):
        for rid in d.report_ids(kind):  # type: ignore[arg-type]
            assert 0 < d.report_bytes(kind, rid) <= 4097  # type: ignore[arg-type]
