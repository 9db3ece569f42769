"""The thin HID driver on real file descriptors: a simulated headset and PC over socket pairs, no sleeps."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path

import pytest

from linetap.drivers.events import HookChanged, LineState, MuteChanged
from linetap.drivers.hid import (HidDescriptorError, HidTelephony, SimHeadset, SimHidNodes, SimHost,
                                 find_headset, gadget)
from linetap.firmware.backoff import Backoff
from linetap.firmware.clock import ManualClock
from linetap.firmware.errors import DeviceError, DeviceMissing

from hid_descriptors import JABRA_LINK_380C, QUALCOMM_ADK_HEADSET

FAST = Backoff(initial=0.01, maximum=0.02, jitter=0.0)


class Board:
    def __init__(self, headset_descriptor: bytes | None = None) -> None:
        self.nodes = SimHidNodes()
        self.headset = SimHeadset(self.nodes) if headset_descriptor is None else \
            SimHeadset(self.nodes, descriptor=headset_descriptor)
        self.host = SimHost(self.nodes)
        self.events: queue.Queue[object] = queue.Queue()
        self.clock = ManualClock()
        self.driver = HidTelephony("/dev/hidraw0", "/dev/hidg0", self.events.put, clock=self.clock,
                                   nodes=self.nodes, reopen_backoff=FAST)

    def event(self, timeout: float = 2.0) -> object:
        return self.events.get(timeout=timeout)

    def close(self) -> None:
        self.driver.close()
        self.headset.close()
        self.host.close()


@pytest.fixture
def board() -> Iterator[Board]:
    b = Board()
    yield b
    b.close()


def test_headset_buttons_reach_the_pc_and_the_box(board: Board) -> None:
    board.clock.advance(5)
    board.headset.set(hook=True)
    assert board.event() == HookChanged(True, "hid-headset")
    assert board.host.controls() == {"hook": True, "mute": False, "flash": False}
    board.headset.press("mute")
    assert board.event() == MuteChanged(True, "hid-headset")
    assert board.host.controls()["mute"] and not board.host.controls()["mute"]  # a press: set, then clear
    board.headset.set(hook=False)  # reports are read in order: once this one's event is here, all were
    assert board.event() == HookChanged(False, "hid-headset")
    stats = board.driver.stats()
    assert stats["headset"]["reports"] == 4 and stats["headset"]["last_report"] == 1005.0  # type: ignore[index]
    assert stats["relative"] == {"hook": False, "mute": True}


def test_the_pc_leds_reach_the_headset_and_open_the_call(board: Board) -> None:
    board.host.set_leds(off_hook=True)
    assert board.event() == HookChanged(True, "hid-host")
    assert board.headset.leds() == {"hook": True, "mute": False, "ring": False, "hold": False,
                                    "microphone": False}
    assert board.host.controls()["hook"]  # the box's hook switch follows the PC
    board.host.set_leds(mute=True)
    assert board.event() == MuteChanged(True, "hid-host")
    assert board.headset.leds()["mute"]
    assert board.driver.stats()["host"]["reports"] == 2  # type: ignore[index]


def test_an_unplugged_headset_is_lost_then_found_again(board: Board) -> None:
    board.host.set_leds(off_hook=True)
    assert board.event() == HookChanged(True, "hid-host")
    board.headset.leds()
    board.headset.unplug()
    lost = board.event()
    assert isinstance(lost, LineState) and lost.state == "lost" and "/dev/hidraw0" in lost.detail
    board.headset.plug()
    back = board.event()
    assert isinstance(back, LineState) and back.state == "ready"
    assert board.headset.leds()["hook"]  # the call's LED is restored on the returning headset
    board.headset.set(hook=True)  # the call is on already: no news
    board.headset.set(hook=False)
    assert board.event() == HookChanged(False, "hid-headset")
    stats = board.driver.stats()["headset"]
    assert stats["lost"] == 1 and stats["reopened"] == 1  # type: ignore[index]


def test_a_different_headset_can_come_back() -> None:
    b = Board(JABRA_LINK_380C)
    try:
        b.headset.unplug()
        assert b.event().state == "lost"  # type: ignore[attr-defined]
        b.headset = SimHeadset(b.nodes, descriptor=QUALCOMM_ADK_HEADSET)
        assert b.event().state == "ready"  # type: ignore[attr-defined]
        b.headset.set(hook=True)
        assert b.event() == HookChanged(True, "hid-headset")
    finally:
        b.close()


def test_a_pc_that_goes_away_costs_writes_not_the_headset(board: Board) -> None:
    board.host.unplug()
    board.headset.set(hook=True)
    assert board.event() == HookChanged(True, "hid-headset")  # the box still hears the headset
    assert board.driver.stats()["host"]["write_failures"] == 1  # type: ignore[index]
    board.host.plug()
    board.host.set_leds(off_hook=True)  # written as soon as the node is back; read once the driver reopens it
    assert board.event() == HookChanged(True, "hid-host")
    assert board.driver.stats()["host"]["reopened"] == 1  # type: ignore[index]


def test_oversized_and_unknown_reports_are_counted(board: Board) -> None:
    board.headset.send(bytes(5000))
    board.headset.send(b"\x09\x01")  # a report id the headset does not have
    board.headset.set(hook=True)
    assert board.event() == HookChanged(True, "hid-headset")
    stats = board.driver.stats()
    assert stats["headset"]["oversized"] == 1 and stats["refused_reports"] == 1  # type: ignore[index]


def test_missing_or_wrong_devices_are_refused_by_name(tmp_path: Path) -> None:
    nodes, clock = SimHidNodes(), ManualClock()
    with pytest.raises(DeviceMissing, match="/dev/hidraw0 .*headset"):
        HidTelephony("/dev/hidraw0", "/dev/hidg0", print, clock=clock, nodes=nodes)
    SimHeadset(nodes)
    with pytest.raises(DeviceMissing, match="/dev/hidg0 .*configfs"):
        HidTelephony("/dev/hidraw0", "/dev/hidg0", print, clock=clock, nodes=nodes)
    keyboard = bytes((0x05, 0x01, 0x09, 0x06, 0xA1, 0x01, 0x05, 0x07, 0x19, 0xE0, 0x29, 0xE7, 0x15, 0x00,
                      0x25, 0x01, 0x75, 0x01, 0x95, 0x08, 0x81, 0x02, 0xC0))
    SimHeadset(nodes, "/dev/hidraw1", descriptor=keyboard)
    SimHost(nodes)
    with pytest.raises(DeviceError, match="no telephony hook switch or mute"):
        HidTelephony("/dev/hidraw1", "/dev/hidg0", print, clock=clock, nodes=nodes)
    nodes.plug("/dev/hidraw2", b"\x05\x0b\xa1")
    with pytest.raises(HidDescriptorError, match="at byte 2"):
        HidTelephony("/dev/hidraw2", "/dev/hidg0", print, clock=clock, nodes=nodes)


def test_close_is_safe_twice(board: Board) -> None:
    board.driver.close()
    board.driver.close()


def test_find_headset_by_its_telephony_usage_in_sysfs(tmp_path: Path) -> None:
    def node(name: str, descriptor: bytes) -> None:
        (tmp_path / name / "device").mkdir(parents=True)
        (tmp_path / name / "device" / "report_descriptor").write_bytes(descriptor)

    node("hidraw0", bytes((0x05, 0x01, 0x09, 0x02, 0xA1, 0x01, 0xC0)))  # a mouse
    node("hidraw1", b"\xff\xff")  # garbage
    with pytest.raises(DeviceMissing, match="hidraw0 \\(applications 0x00010002\\); hidraw1 \\(unreadable"):
        find_headset(tmp_path)
    node("hidraw2", JABRA_LINK_380C)
    assert find_headset(tmp_path) == "/dev/hidraw2"


def test_the_gadget_descriptor_is_what_the_simulated_pc_reads() -> None:
    assert gadget.report_length() == 1
