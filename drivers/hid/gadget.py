"""The box's own HID interface to the PC: a fixed telephony report descriptor (sans-IO).

The image's gadget set-up writes :func:`report_descriptor` and
:func:`report_length` into configfs (``functions/hid.usb0/report_desc``,
``report_length``, ``protocol 0``, ``subclass 0``); the PC then sees a
telephony headset whatever headset is plugged into the box, and the box
forwards between the two (:mod:`linetap.drivers.hid.forward`).

One input report (the box to the PC, 1 byte, no report id): bit 0 Hook
Switch, absolute (the state: off hook while set), bit 1 Phone Mute and bit 2
Flash, relative (a press is the bit set in one report and clear in the
next), bits 3-7 padding. One output report (the PC to the box, 1 byte): bits
0-4 the LEDs Off-Hook, Ring, Mute, Hold and Microphone, bits 5-7 padding.
This is the layout softphones handle best (hook absolute, mute a toggle
button), as in the headsets in the tests.
"""

from __future__ import annotations

from functools import cache

from linetap.drivers.hid.descriptor import ReportDescriptor, parse_descriptor

REPORT_DESCRIPTOR = bytes((
    0x05, 0x0B,  # Usage Page (Telephony)
    0x09, 0x05,  # Usage (Headset)
    0xA1, 0x01,  # Collection (Application)
    0x15, 0x00,  #   Logical Minimum (0)
    0x25, 0x01,  #   Logical Maximum (1)
    0x75, 0x01,  #   Report Size (1)
    0x09, 0x20,  #   Usage (Hook Switch)
    0x95, 0x01,  #   Report Count (1)
    0x81, 0x22,  #   Input (Data,Var,Abs,No Preferred State)
    0x09, 0x2F,  #   Usage (Phone Mute)
    0x09, 0x21,  #   Usage (Flash)
    0x95, 0x02,  #   Report Count (2)
    0x81, 0x06,  #   Input (Data,Var,Rel)
    0x95, 0x05,  #   Report Count (5)
    0x81, 0x01,  #   Input (Const): padding
    0x05, 0x08,  #   Usage Page (LEDs)
    0x09, 0x17,  #   Usage (Off-Hook)
    0x09, 0x18,  #   Usage (Ring)
    0x09, 0x09,  #   Usage (Mute)
    0x09, 0x20,  #   Usage (Hold)
    0x09, 0x21,  #   Usage (Microphone)
    0x95, 0x05,  #   Report Count (5)
    0x91, 0x22,  #   Output (Data,Var,Abs,No Preferred State)
    0x95, 0x03,  #   Report Count (3)
    0x91, 0x01,  #   Output (Const): padding
    0xC0,        # End Collection
))


def report_descriptor() -> bytes:
    """The report descriptor the box presents to the PC (configfs ``report_desc``)."""
    return REPORT_DESCRIPTOR


@cache
def descriptor() -> ReportDescriptor:
    """:data:`REPORT_DESCRIPTOR`, parsed."""
    return parse_descriptor(REPORT_DESCRIPTOR)


def report_length() -> int:
    """The longest report either way, in bytes (configfs ``report_length``)."""
    return max(descriptor().max_report_bytes("input"), descriptor().max_report_bytes("output"))
